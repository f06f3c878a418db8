"""RMS normalisation, plain and gated, computed in float32 as FLA's fused kernels do.

The arithmetic lives in the kernel record (`model/kernels.py`): FLA's Triton kernels on CUDA, the
PyTorch functions elsewhere; the module holds the weight and FLA's parameter names.
"""

from __future__ import annotations

import torch
from torch import nn

from hybridlm.model.kernels import TORCH_KERNELS, Kernels


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight; the statistics in float32 whatever the input dtype."""

    kernels: Kernels = TORCH_KERNELS  # set by HybridLM when it is built or moved

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.rms_norm(x, self.weight, self.eps)

    def add_and_norm(self, update: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(residual + update), residual + update): one fused kernel with FLA (its pre-norm residual add)."""
        return self.kernels.add_rms_norm(update, residual, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * silu(gate): the GDN output norm (FLA's `FusedRMSNormGated`, swish gate)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.kernels.gated_rms_norm(x, gate, self.weight, self.eps)
