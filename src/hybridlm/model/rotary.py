"""Rotary position embedding (non-interleaved halves, as FLA's `RotaryEmbedding`)."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates q and k by position-dependent angles; `offset` shifts positions when decoding."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        # not persistent: it is derived from the config and must not appear in checkpoints (FLA neither)
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self) -> torch.Tensor:
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        return (1.0 / self.theta**exponents).float()

    def reset_parameters(self) -> None:
        self.inv_freq = self._inv_freq().to(self.inv_freq.device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k: [B, T, H, D]; returns both rotated, in their own dtypes."""
        t = q.shape[1]
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        positions = torch.arange(offset, offset + t, device=q.device, dtype=dtype)
        angles = torch.outer(positions, self.inv_freq.to(device=q.device, dtype=dtype))  # [T, D/2]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)[None, :, None, :]
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1)[None, :, None, :]
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.to(cos.dtype)
    half = xf.shape[-1] // 2
    rotated_half = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated_half * sin).to(x.dtype)
