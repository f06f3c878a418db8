"""Everything a training step needs, built once: the model on its device with its kernel record,
activation checkpointing, the per-block compile, data parallelism, the optimizer and the non-finite
guard (torchtitan's order: the model is finished, checkpointed and compiled block by block, sharded,
then the optimizer sees its parameters).

The trainer and the benchmarks both build through here, so a benchmark measures the product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hybridlm.config import Config
from hybridlm.errors import BackendError
from hybridlm.model import HybridLM
from hybridlm.train.nonfinite import NonFiniteGuard
from hybridlm.train.optim import build_optimizer
from hybridlm.train.precision import Precision
from hybridlm.train.step import loss_of


@dataclass
class TrainingParts:
    model: HybridLM                            # the model (sharded in place under FSDP2), for state and eval
    optimizer: torch.optim.Optimizer
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> loss
    guard: NonFiniteGuard
    compiled: bool
    parallel: str = "none"                     # none | ddp | fsdp
    no_sync: Callable | None = None            # skips the gradient reduction, for gradient accumulation
    activation_checkpointing: str = "none"     # none | full | selective


def compiled_layer_types(setting: bool | str, config: Config, device: torch.device) -> tuple[str, ...]:
    """Which blocks `train.compile` compiles: true all, false none, "auto" those measured faster.

    Measured on an H200 (docs/benchmarks.md, 2026-12-01, 48 x 1024): compiled attention blocks are
    faster (h100_transformer 446K vs 311K tokens/s); compiled GDN blocks are not (h100_deltanet 112K vs
    116K: every heavy kernel of a GDN block is already one of FLA's, the custom op recomputes a few small
    intermediates in its backward, and Inductor's short convolution is slower than FLA's). On a CPU
    compiling costs more than small models win. So "auto" compiles the attention blocks on CUDA."""
    if isinstance(setting, bool):
        return ("gdn", "attention") if setting else ()
    return ("attention",) if device.type == "cuda" else ()


def compile_blocks(model: HybridLM, layer_types: tuple[str, ...] = ("gdn", "attention"),
                   documents: bool = False) -> None:
    """Compile the blocks of `layer_types` in place (parameter names unchanged), with the kernel record
    for compiled code: PyTorch norms / SwiGLU / conv that Inductor fuses, FLA only for the GDN chunk
    kernel (a custom op the graph traces through); the loss stays outside the blocks. Every block is one
    graph (`fullgraph=True`, so a graph break is an error, not a silent slowdown) except attention
    blocks whose sliding window cuts: their cached block-mask lookup stays outside the graph, and attention
    blocks of packed `documents`, whose per-batch document block mask is built outside it."""
    from hybridlm.model.kernels import resolve_kernels

    model.compiled_layers = tuple(i for i, t in enumerate(model.config.layer_types) if t in layer_types)
    device = model.lm_head.weight.device
    model.use_kernels(resolve_kernels(model.config.kernels, device, strict=False),
                      resolve_kernels(model.config.kernels, device, for_compile=True, strict=False))
    windowed = model.config.attention.window_size is not None
    for i in model.compiled_layers:
        block = model.model.layers[i]
        block.compile(fullgraph=block.layer_type == "gdn" or not (windowed or documents))


def build_training(config: Config, precision: Precision, world_size: int = 1) -> TrainingParts:
    """The model (seeded by the caller), moved to the device (which picks its kernels), then torchtitan's
    order: activation checkpointing per block, compile per block when asked, data parallelism over
    `world_size` ranks (DDP, or `fully_shard` per block then root), and only then AdamW over the
    resulting (possibly sharded) parameters, and the guard."""
    import torch.distributed as dist

    from hybridlm.train.activation_checkpointing import apply_activation_checkpointing
    from hybridlm.train.parallel import (device_memory_bytes, no_sync_for, parallel_mode, parallelize,
                                         training_state_bytes)

    t = config.train
    model = HybridLM(config.model).to(device=precision.device, dtype=precision.param_dtype)
    if "unavailable" in model.kernels.names.values():  # model.kernels = "fla" where FLA cannot run: before step 1
        raise BackendError(model.kernels.reason)
    apply_activation_checkpointing(model, t.activation_checkpointing)
    layer_types = compiled_layer_types(t.compile, config, precision.device)
    compiled = any(t in layer_types for t in config.model.layer_types)
    if compiled:
        compile_blocks(model, layer_types, documents=config.data.packing == "documents")
    grouped = dist.is_available() and dist.is_initialized()
    auto_needs = t.parallel == "auto" and world_size > 1  # only then does the memory decide
    mode = parallel_mode(t.parallel, world_size, grouped=grouped, replicate=t.fsdp.replicate,
                         state_bytes=training_state_bytes(model) if auto_needs else 0,
                         device_bytes=device_memory_bytes(precision.device) if auto_needs else None)
    runner = parallelize(model, mode, precision.device, t.fsdp, precision.name)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, precision.device.type)
    guard = NonFiniteGuard(t.nan_policy, t.nan_max_skips, precision.device)
    no_sync = no_sync_for(runner) if mode != "none" else None
    return TrainingParts(model, optimizer, loss_of(runner), guard, compiled, mode, no_sync,
                         t.activation_checkpointing)
