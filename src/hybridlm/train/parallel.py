"""Several processes training one model, on PyTorch's own engine: torchrun's environment, the
process group, and `parallelize` (data parallel through DDP, or FSDP2's `fully_shard`).

    torchrun --nproc_per_node=N -m hybridlm train --preset ... --out DIR

Each rank takes its device from LOCAL_RANK (NCCL on CUDA, gloo on a CPU). Besides the training
group, a small gloo group carries control decisions (stop after a signal, an error on rank 0
before training) as CPU tensors, so agreeing on them never synchronises a GPU stream.

The order of the steps that turn the model into what trains (torchtitan's): activation
checkpointing, then the per-block compile (train/setup.py), then `parallelize`: `fully_shard` on
every block and then on the root (or DDP around the whole), then the optimizer over the result.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from hybridlm.config.train_config import PARALLEL_MODES, FsdpConfig
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.train.distributed import ProcessInfo

# DDP keeps weights, gradients and AdamW's two moments whole on every device; when they would take more
# than this share of a device's memory, activations rarely fit beside them and "auto" shards (FSDP2)
DDP_STATE_FRACTION = 0.5
_control = None  # the gloo group for control messages


def init_distributed(proc: ProcessInfo, requested_device: str, parallel: str = "auto") -> torch.device:
    """This rank's device; under torchrun also the process group: always with WORLD_SIZE > 1, and with
    one process when train.parallel asks for "ddp" or "fsdp" (to measure their cost on one GPU)."""
    from hybridlm.train.precision import resolve_device

    launched = "MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ  # what torchrun sets
    if proc.world_size == 1 and not (launched and parallel in ("ddp", "fsdp")):
        return resolve_device(requested_device)
    global _control
    use_cuda = requested_device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", proc.local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=int(os.environ.get("HYBRIDLM_DIST_TIMEOUT_S", "1800")))
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    _control = dist.new_group(backend="gloo") if use_cuda else dist.group.WORLD
    return device


def parallel_mode(setting: str, world_size: int, *, grouped: bool | None = None, state_bytes: int = 0,
                  device_bytes: int | None = None, replicate: int = 1) -> str:
    """What `train.parallel` means here: none, ddp or fsdp.

    "auto": none on one process; with several, fsdp when the training state (`state_bytes`: weights,
    gradients, AdamW moments) exceeds DDP_STATE_FRACTION of one device's memory or HSDP is asked for
    (`replicate` > 1), else ddp. "ddp" / "fsdp" on one process wrap the model only inside a process group
    (`grouped`: torchrun with one process); without one there is nothing to replicate or shard."""
    if setting not in PARALLEL_MODES:
        raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {setting!r}")
    grouped = world_size > 1 if grouped is None else grouped
    if setting == "auto":
        if world_size == 1:
            return "none"
        too_big = device_bytes is not None and state_bytes > DDP_STATE_FRACTION * device_bytes
        return "fsdp" if too_big or replicate > 1 else "ddp"
    if setting == "none" and world_size > 1:
        raise ConfigError(f"train.parallel = 'none' with WORLD_SIZE={world_size}: each rank would train its own "
                          "copy; use 'auto', 'ddp' or 'fsdp'")
    if setting in ("ddp", "fsdp") and not grouped:
        return "none"
    return setting


def training_state_bytes(model: nn.Module) -> int:
    """Bytes of weights + gradients + AdamW's two moments (all in the parameters' dtype), unsharded."""
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters())


def device_memory_bytes(device: torch.device) -> int:
    """Memory of the smallest device of the job (so every rank picks the same mode): a GPU's, or on a CPU
    a rank's share of its host's."""
    if device.type == "cuda":
        local = torch.cuda.get_device_properties(device).total_memory
    else:
        ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        local = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // ranks_here
    if not is_distributed():
        return local
    value = torch.tensor([local], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=_control)
    return int(value.item())


def parallelize(model: nn.Module, mode: str, device: torch.device, fsdp: FsdpConfig | None = None,
                precision: str = "fp32") -> nn.Module:
    """The module the forward runs through: the model itself (also under FSDP2, which shards it in place)
    or its DDP wrapper. Parameter names are unchanged in every mode."""
    if mode == "none":
        return model
    if mode == "fsdp":
        return shard_model(model, device, fsdp or FsdpConfig(), precision)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_model(model: nn.Module, device: torch.device, fsdp: FsdpConfig, precision: str) -> nn.Module:
    """`fully_shard` every block, then the root (embeddings, final norm, LM head), over a 1-D mesh of all
    ranks or, with `fsdp.replicate` > 1, a (replicate, shard) mesh (HSDP)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    world = dist.get_world_size()
    if world % fsdp.replicate:
        raise ConfigError(f"train.fsdp.replicate = {fsdp.replicate} does not divide the {world} processes; "
                          "use a divisor (replicate x shard = WORLD_SIZE), or 1 for plain FSDP")
    if fsdp.replicate > 1:
        mesh = init_device_mesh(device.type, (fsdp.replicate, world // fsdp.replicate),
                                mesh_dim_names=("replicate", "shard"))
    else:
        mesh = init_device_mesh(device.type, (world,), mesh_dim_names=("shard",))
    policy = MixedPrecisionPolicy()
    if precision == "bf16" and fsdp.mixed_precision:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = list(model.model.layers)
    for i, block in enumerate(blocks):
        # the last block is the first one backward needs: keeping it gathered saves one all-gather
        fully_shard(block, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=fsdp.reshard_after_forward and i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def no_sync_for(module: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """A context that skips the gradient all-reduce / reduce-scatter (all but the last micro-batch of a
    step): DDP's `no_sync`, FSDP2's `set_requires_gradient_sync(False)` (gradients then accumulate
    unsharded until the last micro-batch reduces them)."""
    if is_sharded(module):
        return functools.partial(_fsdp_no_sync, module)
    return getattr(module, "no_sync", contextlib.nullcontext)


@contextlib.contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agree_any(flag: bool) -> bool:
    """True on every rank when it is True on any (a stop requested by a signal); free on one process."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=_control)
    return bool(value.item())


def share_outcome(rank: int, check: Callable[[], None]) -> None:
    """Run `check` on rank 0 only (e.g. the run-directory checks) and raise its error on every rank."""
    if not is_distributed():
        check()
        return
    message = [None]
    if rank == 0:
        try:
            check()
        except HybridLMError as exc:
            message = [str(exc)]
    dist.broadcast_object_list(message, src=0, group=_control)
    if message[0] is not None:
        raise HybridLMError(message[0])


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (evaluation sums, the logged loss)."""
    if is_distributed():
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def barrier() -> None:
    if is_distributed():
        dist.barrier(group=_control)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
