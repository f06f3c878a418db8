"""RMS normalisation, plain and gated, computed in float32 as FLA's fused kernels do."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.model import fused


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight; the statistics in float32 whatever the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, use_fused: bool = False):
        super().__init__()
        self.eps = eps
        self.use_fused = use_fused  # FLA's Triton kernel on CUDA (see model/fused.py)
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_fused and x.is_cuda:
            if torch.is_autocast_enabled("cuda"):
                # The norm's output feeds up to six projections, and autocast would cast an fp32 output
                # to bf16 once per projection. Casting the input once instead (the kernel still
                # normalises in fp32) rounds the input to bf16 first, as FLA's bf16 models do; the fp32
                # residual stream itself is untouched.
                x = x.to(torch.get_autocast_dtype("cuda"))
            y = fused.rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
        return self._reference(x)

    def add_and_norm(self, update: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(residual + update), residual + update): one fused kernel on CUDA (FLA's pre-norm
        residual add), else the two steps in PyTorch."""
        if self.use_fused and update.is_cuda:
            out = fused.add_rms_norm(update, residual, self.weight, self.eps)
            if out is not None:
                return out
        total = residual + update
        return self(total), total

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.to(y.dtype)).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * silu(gate): the GDN output norm (FLA's `FusedRMSNormGated`, swish gate)."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.use_fused and x.is_cuda:
            y = fused.gated_rms_norm(x, gate, self.weight, self.eps)
            if y is not None:
                return y
        y = self._reference(x)
        gf = gate.float() if gate.dtype in (torch.float16, torch.bfloat16) else gate
        return (y.to(gf.dtype) * F.silu(gf)).to(x.dtype)
