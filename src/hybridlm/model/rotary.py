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

    def forward(self, q: torch.Tensor, k: torch.Tensor, offset: int = 0,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q, k: [B, T, H, D]; returns both rotated, in their own dtypes. `positions` [T] replaces
        offset, offset + 1, ...: packed documents count from each document's start."""
        if positions is None:
            positions = torch.arange(offset, offset + q.shape[1], device=q.device)
        cos, sin = (c[None, :, None, :] for c in rotary_cos_sin(self.inv_freq, positions, q.dtype))
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def rotary_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., D] of the angles at integer `positions` [...] (a tensor, so decoding can keep the
    position on the device), in float32 (float64 for float64 inputs): the same values as `forward`."""
    dtype = torch.float64 if dtype == torch.float64 else torch.float32
    angles = positions.to(dtype)[..., None] * inv_freq.to(device=positions.device, dtype=dtype)  # [..., D/2]
    return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([angles.sin(), angles.sin()], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated by cos / sin broadcast to it (from `rotary_cos_sin`), in x's dtype."""
    xf = x.to(cos.dtype)
    half = xf.shape[-1] // 2
    rotated_half = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos + rotated_half * sin).to(x.dtype)
