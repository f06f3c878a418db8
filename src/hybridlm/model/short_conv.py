"""Causal depthwise short convolution followed by SiLU (FLA's `ShortConvolution`).

The weight is an `nn.Conv1d` depthwise kernel `[D, 1, K]`, so checkpoints match FLA's. A whole
sequence from zeros (training, a prefill) runs the kernel record's `short_conv`; a chunk after earlier
tokens continues from the last K-1 inputs (`conv_with_tail`); one decoded token runs the record's
`short_conv_step`, which shifts the conv state in place (ops/decode_step.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.model.kernels import TORCH_KERNELS, Kernels


def conv_with_tail(x: torch.Tensor, weight: torch.Tensor,
                   tail: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(causal depthwise conv) of x [B, T, D] continuing after `tail`, the previous K-1 inputs
    [B, K-1, D] (zeros when None); weight [D, 1, K]. Returns (y [B, T, D], the new tail)."""
    k = weight.shape[-1]
    if tail is None:
        tail = x.new_zeros(x.shape[0], k - 1, x.shape[2])
    full = torch.cat([tail.to(x.dtype), x], dim=1)  # [B, K-1+T, D]
    y = F.conv1d(full.transpose(1, 2), weight.to(x.dtype), groups=weight.shape[0]).transpose(1, 2)
    return F.silu(y), full[:, full.shape[1] - (k - 1):]


class ShortConvolution(nn.Conv1d):
    kernels: Kernels = TORCH_KERNELS  # set by HybridLM when it is built or moved

    def __init__(self, hidden_size: int, kernel_size: int = 4):
        super().__init__(hidden_size, hidden_size, kernel_size, groups=hidden_size, bias=False,
                         padding=0)

    def forward(self, x: torch.Tensor, tail: torch.Tensor | None = None,  # type: ignore[override]
                return_tail: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, T, D]; tail: the previous K-1 inputs [B, K-1, D] (zeros when None).

        Returns silu(conv(x)) [B, T, D] and, when asked, the new tail for the next call.
        """
        if tail is None and not return_tail:
            return self.kernels.short_conv(x, self.weight), None
        y, new_tail = conv_with_tail(x, self.weight, tail)
        return y, new_tail if return_tail else None
