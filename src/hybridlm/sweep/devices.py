"""`--devices`: the slots members run in, and the environment that pins a member to its slot.

A GPU slot gives its member `CUDA_VISIBLE_DEVICES=<that GPU>` rather than `train.device=cuda:N`:
the member's saved config then says nothing about the GPU, so an interrupted member resumes on
whichever slot is free next. A CPU slot hides the GPUs. With several slots on one machine, the
CPU threads are split between them so parallel members do not oversubscribe the cores.

With `--gpus-per-member K` a slot is K consecutive GPUs of the list (`cuda:0,cuda:1` then
`cuda:2,cuda:3`), and its member runs K processes under torchrun; a `cpu` slot then runs K
gloo processes on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hybridlm.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    index: int
    device: str                                   # "cpu", "cuda:N" or "cuda:0,cuda:1" (as this process numbers GPUs)
    env: dict[str, str] = field(default_factory=dict)
    nproc: int = 1                                # processes of one member: > 1 runs it under torchrun


def visible_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop a CPU sweep
        return 0


def parse_devices(text: str | None, gpu_count: int | None = None, cpu_count: int | None = None,
                  per_member: int = 1) -> list[Slot]:
    """'auto' (all visible GPUs, else one CPU slot), 'cpu', 'cpu,cpu', 'cuda:0,cuda:1', '0,1' or 'cuda';
    `per_member` > 1 groups the GPUs into slots of that many (`--gpus-per-member`)."""
    text = (text or "auto").strip()
    gpus = visible_gpu_count() if gpu_count is None else gpu_count
    if text == "auto":
        devices = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
        if per_member > 1 and devices != ["cpu"]:
            devices = devices[:len(devices) // per_member * per_member]
    else:
        devices = [_normalise(item.strip(), gpus) for item in text.split(",") if item.strip()]
        if not devices:
            raise ConfigError("--devices is empty; use auto, cpu, or a list like cuda:0,cuda:1")
    groups = _group(devices, per_member)
    threads = _threads_per_process(len(groups) * per_member, cpu_count)
    parent_visible = _parent_visible_gpus()
    slots = []
    for i, group in enumerate(groups):
        env: dict[str, str] = {}
        if group == ["cpu"]:
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            indices = [int(device.split(":")[1]) for device in group]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(parent_visible[j] if parent_visible else str(j) for j in indices)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
            env["MKL_NUM_THREADS"] = str(threads)
        slots.append(Slot(i, ",".join(group), env, per_member))
    return slots


def _group(devices: list[str], per_member: int) -> list[list[str]]:
    """One list of devices per slot: a CPU slot hosts all its member's processes, GPUs go K at a time."""
    if per_member < 1:
        raise ConfigError(f"--gpus-per-member must be at least 1, got {per_member}")
    if per_member == 1:
        return [[d] for d in devices]
    cpus = [[d] for d in devices if d == "cpu"]
    gpus = [d for d in devices if d != "cpu"]
    if cpus and gpus:
        raise ConfigError("--devices mixes cpu and GPUs; with --gpus-per-member use one kind of device")
    if cpus:
        return cpus
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--devices {','.join(gpus)} names a GPU twice; a member's {per_member} GPUs must differ")
    if not gpus or len(gpus) % per_member:
        raise ConfigError(f"--gpus-per-member {per_member} needs a multiple of {per_member} GPUs; --devices gives "
                          f"{len(gpus)}")
    return [gpus[i:i + per_member] for i in range(0, len(gpus), per_member)]


def _normalise(item: str, gpus: int) -> str:
    if item == "cpu":
        return "cpu"
    if item == "cuda":
        item = "cuda:0"
    if item.isdigit():
        item = f"cuda:{item}"
    if not item.startswith("cuda:") or not item[5:].isdigit():
        raise ConfigError(f"--devices item {item!r} is not cpu, cuda, cuda:N or N")
    index = int(item[5:])
    if index >= gpus:
        seen = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
        raise ConfigError(f"--devices {item}: torch sees {seen} here; use auto or cpu")
    return item


def _threads_per_process(processes: int, cpu_count: int | None) -> int | None:
    if processes <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cores // processes)


def _parent_visible_gpus() -> list[str]:
    """This process's CUDA_VISIBLE_DEVICES list: cuda:1 here is the second entry of it, not GPU 1."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
