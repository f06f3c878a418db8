"""Several processes training one model, on PyTorch's own engine: torchrun's environment, the
process group, and `parallelize` (data parallel through DDP).

    torchrun --nproc_per_node=N -m hybridlm train --preset ... --out DIR

Each rank takes its device from LOCAL_RANK (NCCL on CUDA, gloo on a CPU). Besides the training
group, a small gloo group carries control decisions (stop after a signal, an error on rank 0
before training) as CPU tensors, so agreeing on them never synchronises a GPU stream.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.train.distributed import ProcessInfo

PARALLEL_MODES = ("auto", "none", "ddp")
_control = None  # the gloo group for control messages


def init_distributed(proc: ProcessInfo, requested_device: str) -> torch.device:
    """This rank's device; under torchrun (WORLD_SIZE > 1) also the process group."""
    from hybridlm.train.precision import resolve_device

    if proc.world_size == 1:
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


def parallel_mode(setting: str, world_size: int) -> str:
    if setting not in PARALLEL_MODES:
        raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {setting!r}")
    if setting == "auto":
        return "ddp" if world_size > 1 else "none"
    if setting == "ddp" and world_size == 1:
        return "none"  # DDP over one process is the plain model
    if setting == "none" and world_size > 1:
        raise ConfigError(f"train.parallel = 'none' with WORLD_SIZE={world_size}: each rank would train its own "
                          "copy; use 'auto' or 'ddp'")
    return setting


def parallelize(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """The module the forward runs through: the model itself, or its DDP wrapper (which all-reduces grads)."""
    if mode == "none":
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync_for(module: nn.Module) -> Callable[[], contextlib.AbstractContextManager]:
    """A context that skips the gradient all-reduce (all but the last micro-batch of a step)."""
    return getattr(module, "no_sync", contextlib.nullcontext)


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
