"""SwiGLU feed-forward block with FLA's parameter names (gate_proj, up_proj, down_proj)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.model import fused


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, use_fused: bool = False):
        super().__init__()
        self.use_fused = use_fused
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        if self.use_fused and x.is_cuda:
            hidden = fused.swiglu(gate, up)
            if hidden is not None:
                return self.down_proj(hidden)
        return self.down_proj(F.silu(gate) * up)
