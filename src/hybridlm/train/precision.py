"""Device and numeric precision of a run.

CUDA: bf16 autocast with float32 master weights (default), or `bf16-pure` (weights and AdamW
state in bf16, as the reference scripts). CPU: float32 (bf16 autocast on request).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from hybridlm.errors import ConfigError


@dataclass(frozen=True)
class Precision:
    device: torch.device
    name: str                       # fp32 | bf16 | bf16-pure
    param_dtype: torch.dtype

    def autocast(self):
        if self.name == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={requested!r} but CUDA is not available here; use auto or cpu")
    return device


def resolve_precision(requested: str, device: torch.device) -> Precision:
    name = requested
    if requested == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    if device.type == "cuda" and name != "fp32":
        # float32 matmuls outside autocast in a bf16 run use TF32 tensor cores, as nanoGPT does (the
        # H100 numbers in docs/gpu-verification.md were measured so); fp32 runs stay exact
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if name == "bf16-pure":
        return Precision(device, name, torch.bfloat16)
    return Precision(device, name, torch.float32)
