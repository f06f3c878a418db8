"""SwiGLU feed-forward block with FLA's parameter names (gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import torch
from torch import nn

from hybridlm.model.kernels import TORCH_KERNELS, Kernels


class SwiGLU(nn.Module):
    kernels: Kernels = TORCH_KERNELS  # set by HybridLM when it is built or moved

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.kernels.swiglu(self.gate_proj(x), self.up_proj(x)))
