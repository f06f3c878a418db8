"""The Gated DeltaNet mixer, parameter for parameter as FLA 0.6.0's `GatedDeltaNet` layer.

    q, k, v = silu(short_conv(proj(x)))          per projection
    q, k    = L2-normalised per head              (inside the op)
    beta    = sigmoid(b_proj x)                   (x2 with allow_neg_eigval)
    g       = -exp(A_log) * softplus(a_proj x + dt_bias)      log-space decay
    S_t     = exp(g_t)(I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(d_k)
    out     = o_proj(RMSNorm(o) * silu(g_proj x))   per value head
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.kernels import TORCH_KERNELS, Kernels
from hybridlm.model.norm import GatedRMSNorm, RMSNorm
from hybridlm.model.short_conv import ShortConvolution


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

    def _conv(self, name: str, x: torch.Tensor, cache: dict | None) -> torch.Tensor:
        if not self.use_short_conv:
            return F.silu(x)
        conv: ShortConvolution = getattr(self, f"{name}_conv1d")
        tail = cache["conv"].get(name) if cache is not None else None
        y, new_tail = conv(x, tail=tail, return_tail=cache is not None)
        if cache is not None:
            cache["conv"][name] = new_tail
        return y

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x: [B, T, hidden]. `cache` (a dict, updated in place) carries the state between calls."""
        b, t, _ = x.shape
        q = self._conv("q", self.q_proj(x), cache).view(b, t, self.num_heads, self.head_k_dim)
        k = self._conv("k", self.k_proj(x), cache).view(b, t, self.num_heads, self.head_k_dim)
        v = self._conv("v", self.v_proj(x), cache).view(b, t, self.num_v_heads, self.head_v_dim)
        a, beta_raw = self.a_proj(x), self.b_proj(x)
        if cache is None:  # training / scoring: gates and q/k norms fused into FLA's chunk kernel
            o = self.kernels.gdn_train(q, k, v, a, beta_raw, self.A_log, self.dt_bias, self.allow_neg_eigval)
            return self._output(x, o)
        acc = torch.promote_types(x.dtype, torch.float32)  # gates in float32 (float64 in tests)
        beta = beta_raw.to(acc).sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        g = -self.A_log.to(acc).exp() * F.softplus(a.to(acc) + self.dt_bias.to(acc))
        o, cache["state"] = self.kernels.gdn(q, k, v, g, beta, cache.get("state"), True)
        return self._output(x, o)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """Per-head output norm (gated by silu(g_proj x) when use_gate), then o_proj."""
        b, t, _ = x.shape
        if self.use_gate:
            gate = self.g_proj(x).view(b, t, self.num_v_heads, self.head_v_dim)
            o = self.o_norm(o, gate)
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(b, t, self.value_dim))
