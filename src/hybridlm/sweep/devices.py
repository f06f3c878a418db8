"""`--devices`: the slots members run in, and the environment that pins a member to its slot.

A GPU slot gives its member `CUDA_VISIBLE_DEVICES=<that GPU>` rather than `train.device=cuda:N`:
the member's saved config then says nothing about the GPU, so an interrupted member resumes on
whichever slot is free next. A CPU slot hides the GPUs. With several slots on one machine, the
CPU threads are split between them so parallel members do not oversubscribe the cores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hybridlm.errors import ConfigError


@dataclass(frozen=True)
class Slot:
    index: int
    device: str                                   # "cpu" or "cuda:N" (N as this process numbers GPUs)
    env: dict[str, str] = field(default_factory=dict)


def visible_gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA install must not stop a CPU sweep
        return 0


def parse_devices(text: str | None, gpu_count: int | None = None, cpu_count: int | None = None) -> list[Slot]:
    """'auto' (all visible GPUs, else one CPU slot), 'cpu', 'cpu,cpu', 'cuda:0,cuda:1', '0,1' or 'cuda'."""
    text = (text or "auto").strip()
    gpus = visible_gpu_count() if gpu_count is None else gpu_count
    if text == "auto":
        devices = [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    else:
        devices = [_normalise(item.strip(), gpus) for item in text.split(",") if item.strip()]
        if not devices:
            raise ConfigError("--devices is empty; use auto, cpu, or a list like cuda:0,cuda:1")
    threads = _threads_per_slot(len(devices), cpu_count)
    parent_visible = _parent_visible_gpus()
    slots = []
    for i, device in enumerate(devices):
        env: dict[str, str] = {}
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        else:
            index = int(device.split(":")[1])
            env["CUDA_VISIBLE_DEVICES"] = parent_visible[index] if parent_visible else str(index)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
            env["MKL_NUM_THREADS"] = str(threads)
        slots.append(Slot(i, device, env))
    return slots


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


def _threads_per_slot(slots: int, cpu_count: int | None) -> int | None:
    if slots <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return max(1, cores // slots)


def _parent_visible_gpus() -> list[str]:
    """This process's CUDA_VISIBLE_DEVICES list: cuda:1 here is the second entry of it, not GPU 1."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not value:
        return []
    return [v.strip() for v in value.split(",") if v.strip()]
