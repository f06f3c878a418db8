"""Everything a training step needs, built once: the model on its device with its kernel record,
the per-block compile, the optimizer and the non-finite guard (torchtitan's order: the model is
finished, then compiled block by block, then the optimizer sees its parameters).

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
    model: HybridLM
    optimizer: torch.optim.Optimizer
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, labels) -> loss
    guard: NonFiniteGuard
    compiled: bool
    parallel: str = "none"                     # none | ddp
    no_sync: Callable | None = None            # DDP's no_sync, for gradient accumulation


def compile_wanted(setting: bool | str, config: Config, device: torch.device) -> bool:
    """`train.compile`: true / false, or "auto": on only where it was measured faster than eager.

    Measured on an H200 (docs/benchmarks.md, 2026-12-01): compiled blocks are faster for layouts without
    GDN layers (h100_transformer 443K vs 313K tokens/s at 48 x 1024) and slower wherever GDN layers are
    (FLA's chunk kernel breaks the graph: h100_deltanet 93K vs 136K). On a CPU compiling costs more
    than small models win. So "auto" compiles attention-only models on CUDA."""
    if isinstance(setting, bool):
        return setting
    return device.type == "cuda" and "gdn" not in config.model.layer_types


def compile_blocks(model: HybridLM) -> None:
    """Compile each block in place (parameter names unchanged), with the kernel record for compiled code:
    PyTorch norms / SwiGLU / conv that Inductor fuses, FLA only for the GDN chunk kernel (a custom op
    the graph traces through) and the loss (outside the blocks). Every block is one graph
    (`fullgraph=True`, so a graph break is an error, not a silent slowdown) except attention blocks
    whose sliding window cuts: their cached block-mask lookup stays outside the graph."""
    from hybridlm.model.kernels import resolve_kernels

    model.kernels_for_compile = True
    model.use_kernels(resolve_kernels(model.config.kernels, model.lm_head.weight.device, for_compile=True,
                                      strict=False))
    windowed = model.config.attention.window_size is not None
    for block in model.model.layers:
        block.compile(fullgraph=block.layer_type == "gdn" or not windowed)


def build_training(config: Config, precision: Precision, world_size: int = 1) -> TrainingParts:
    """The model (seeded by the caller), moved to the device (which picks its kernels), compiled per
    block when asked, wrapped for data parallelism over `world_size` ranks, its AdamW, and the guard."""
    from hybridlm.train.parallel import no_sync_for, parallel_mode, parallelize

    t = config.train
    model = HybridLM(config.model).to(device=precision.device, dtype=precision.param_dtype)
    if "unavailable" in model.kernels.names.values():  # model.kernels = "fla" where FLA cannot run: before step 1
        raise BackendError(model.kernels.reason)
    compiled = compile_wanted(t.compile, config, precision.device)
    if compiled:
        compile_blocks(model)
    mode = parallel_mode(t.parallel, world_size)
    runner = parallelize(model, mode, precision.device)
    optimizer = build_optimizer(model, t.lr, t.weight_decay, (t.beta1, t.beta2), t.eps, precision.device.type)
    guard = NonFiniteGuard(t.nan_policy, t.nan_max_skips, precision.device)
    no_sync = no_sync_for(runner) if mode == "ddp" else None
    return TrainingParts(model, optimizer, loss_of(runner), guard, compiled, mode, no_sync)
