"""The Gated DeltaNet mixer, parameter for parameter as FLA 0.6.0's `GatedDeltaNet` layer.

    q, k, v = silu(short_conv(proj(x)))          per projection
    q, k    = L2-normalised per head              (inside the op)
    beta    = sigmoid(b_proj x)                   (x2 with allow_neg_eigval)
    g       = -exp(A_log) * softplus(a_proj x + dt_bias)      log-space decay
    S_t     = exp(g_t)(I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(d_k)
    out     = o_proj(RMSNorm(o) * silu(g_proj x))   per value head

The six input projections run as one GEMM over their stacked weights and the three short convolutions
as one depthwise convolution over q|k|v: the same functions (every output element is the same dot
product), with one pass over x and one backward GEMM instead of six plus five additions, while the
parameters keep FLA's names and shapes so checkpoints load into FLA and back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.kernels import TORCH_KERNELS, Kernels
from hybridlm.model.norm import GatedRMSNorm, RMSNorm
from hybridlm.model.short_conv import ShortConvolution, conv_with_tail


class GatedDeltaNet(nn.Module):
    kernels: Kernels = TORCH_KERNELS  # set by HybridLM when it is built or moved

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_v_heads = config.gdn_value_heads
        self.head_k_dim = config.head_dim
        self.head_v_dim = config.head_v_dim
        self.key_dim = self.num_heads * self.head_k_dim
        self.value_dim = self.num_v_heads * self.head_v_dim
        self.allow_neg_eigval = config.allow_neg_eigval
        self.use_gate = config.use_gate
        self.use_short_conv = config.use_short_conv
        hidden = config.hidden_size

        self.q_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.key_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.value_dim, bias=False)
        self.a_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.b_proj = nn.Linear(hidden, self.num_v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(self.num_v_heads))
        self.dt_bias = nn.Parameter(torch.empty(self.num_v_heads))
        if self.use_short_conv:
            self.q_conv1d = ShortConvolution(self.key_dim, config.conv_size)
            self.k_conv1d = ShortConvolution(self.key_dim, config.conv_size)
            self.v_conv1d = ShortConvolution(self.value_dim, config.conv_size)
        if self.use_gate:
            self.g_proj = nn.Linear(hidden, self.value_dim, bias=False)
            self.o_norm = GatedRMSNorm(self.head_v_dim, eps=config.norm_eps)
        else:
            self.o_norm = RMSNorm(self.head_v_dim, eps=config.norm_eps)
        self.o_proj = nn.Linear(self.value_dim, hidden, bias=False)
        self.reset_decay_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self) -> None:
        """FLA's init: A ~ U(0, 16) stored as log; dt log-uniform in [1e-3, 0.1] stored as softplus^-1."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0, 16).log())
        dt_min, dt_max = 1e-3, 0.1
        u = torch.rand_like(self.dt_bias)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _in_projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(q|k|v before the convolution, g_proj x or None, a_proj x, b_proj x) from one GEMM."""
        gate = [self.g_proj.weight] if self.use_gate else []
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, *gate,
                            self.a_proj.weight, self.b_proj.weight])
        qkv_dim = 2 * self.key_dim + self.value_dim
        sizes = [qkv_dim, *([self.value_dim] if self.use_gate else []), self.num_v_heads, self.num_v_heads]
        parts = F.linear(x, weight).split(sizes, dim=-1)
        g = parts[1] if self.use_gate else None
        return parts[0], g, parts[-2], parts[-1]

    def _conv(self, qkv: torch.Tensor, cache: dict | None) -> torch.Tensor:
        """silu(short conv) of q|k|v at once (the depthwise conv never mixes channels)."""
        if not self.use_short_conv:
            return F.silu(qkv)
        weight = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
        if cache is None:
            return self.kernels.short_conv(qkv, weight)
        y, cache["conv"] = conv_with_tail(qkv, weight, cache.get("conv"))
        return y

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x: [B, T, hidden]. `cache` (a dict, updated in place) carries the state between calls."""
        b, t, _ = x.shape
        qkv, gate, a, beta_raw = self._in_projections(x)
        q, k, v = self._conv(qkv, cache).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, t, self.num_heads, self.head_k_dim)
        k = k.reshape(b, t, self.num_heads, self.head_k_dim)
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)
        if cache is None:  # training / scoring: gates and q/k norms fused into FLA's chunk kernel
            o = self.kernels.gdn_train(q, k, v, a, beta_raw, self.A_log, self.dt_bias, self.allow_neg_eigval)
            return self._output(o, gate)
        acc = torch.promote_types(x.dtype, torch.float32)  # gates in float32 (float64 in tests)
        beta = beta_raw.to(acc).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))
        o, cache["state"] = self.kernels.gdn(q, k, v, g, beta, cache.get("state"), True)
        return self._output(o, gate)

    def _output(self, o: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Per-head output norm (gated by silu(g_proj x) when use_gate), then o_proj."""
        b, t = o.shape[:2]
        if gate is not None:
            o = self.o_norm(o, gate.reshape(b, t, self.num_v_heads, self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(b, t, self.value_dim))
