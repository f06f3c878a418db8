"""What the run ran on: Python, torch, CUDA, GPU, kernel backend, FLA source, git commit."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from hybridlm.fla_source import fla_info


def project_commit() -> str | None:
    """The hybridlm git commit (with '-dirty' when the work tree has changes), if in a checkout."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def environment_info(device: torch.device | None = None, kernel_backend: str | None = None) -> dict:
    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - triton is optional and may fail to import on CPU machines
        triton_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": gpu,
        "device": str(device) if device is not None else None,
        "triton": triton_version,
        "kernel_backend": kernel_backend,
        "fla": fla_info(),
        "hybridlm_commit": project_commit(),
    }
