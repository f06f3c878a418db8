"""The Gated DeltaNet mixer, parameter for parameter as FLA 0.6.0's `GatedDeltaNet` layer.

    q, k, v = silu(short_conv(proj(x)))          per projection
    q, k    = L2-normalised per head              (inside the op)
    beta    = sigmoid(b_proj x)                   (x2 with allow_neg_eigval)
    g       = -exp(A_log) * softplus(a_proj x + dt_bias)      log-space decay
    S_t     = exp(g_t)(I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,   o_t = S_t^T q_t / sqrt(d_k)
    out     = o_proj(RMSNorm(o) * silu(g_proj x))   per value head

Training runs the projections and short convolutions one by one, as FLA's layer does: stacking them
into one GEMM and one convolution over q|k|v was measured slower on an H200 (116K vs 136K tokens/s for
h100_deltanet, docs/benchmarks.md), because splitting the stacked output makes q, k and v strided views
that the chunk kernel must copy, and the split's backward concatenates the gradients again. Prefill and
decoding, which have no backward, use the stacked form (`_in_projections`, `_conv`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.cache import GDNCache
from hybridlm.model.kernels import TORCH_KERNELS, Kernels
from hybridlm.model.norm import GatedRMSNorm, RMSNorm
from hybridlm.model.short_conv import ShortConvolution, conv_with_tail
from hybridlm.ops.gdn_torch import gdn_gates


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

    def _conv(self, qkv: torch.Tensor, cache: GDNCache | None) -> torch.Tensor:
        """silu(short conv) of q|k|v at once (the depthwise conv never mixes channels)."""
        if not self.use_short_conv:
            return F.silu(qkv)
        weight = torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight])
        if cache is None:
            return self.kernels.short_conv(qkv, weight)
        if cache.owner.rows_empty():  # a prefill: the training kernel, from zeros
            y = self.kernels.short_conv(qkv, weight)
        else:
            y, _ = conv_with_tail(qkv, weight, cache.conv[:, :, 1:].transpose(1, 2))
        cache.store_conv_inputs(qkv)
        return y

    def _train_forward(self, x: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """Training and scoring (no state): gates and q/k norms fused into FLA's chunk kernel. With
        `cu_seqlens` (packed documents, B = 1) the convolutions and the state restart at each document;
        without, the calls are exactly those of before packing existed."""
        b, t, _ = x.shape
        varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d) if self.use_short_conv else (None,) * 3
        q, k, v = (self.kernels.short_conv(proj(x), conv.weight, **varlen) if conv is not None else F.silu(proj(x))
                   for proj, conv in zip((self.q_proj, self.k_proj, self.v_proj), convs))
        q = q.view(b, t, self.num_heads, self.head_k_dim)
        k = k.view(b, t, self.num_heads, self.head_k_dim)
        v = v.view(b, t, self.num_v_heads, self.head_v_dim)
        o = self.kernels.gdn_train(q, k, v, self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias,
                                   self.allow_neg_eigval, **varlen)
        return self._output(o, self.g_proj(x) if self.use_gate else None)

    def forward(self, x: torch.Tensor, cache: GDNCache | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, hidden]. `cache` (updated in place) carries the state between calls; `cu_seqlens`
        (training and scoring only, B = 1) marks packed documents that share nothing."""
        if cache is not None and cu_seqlens is not None:
            raise ValueError("packed documents (cu_seqlens) are for training and scoring, not with a cache")
        if cache is None:
            return self._train_forward(x, cu_seqlens)
        cache.ensure(x)
        if x.shape[1] == 1:
            return self._step(x, cache)
        b, t, _ = x.shape
        qkv, gate, a, beta_raw = self._in_projections(x)
        q, k, v = self._conv(qkv, cache).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, t, self.num_heads, self.head_k_dim)
        k = k.reshape(b, t, self.num_heads, self.head_k_dim)
        v = v.reshape(b, t, self.num_v_heads, self.head_v_dim)
        # a prefill (chunk kernel from zeros), or more tokens after earlier ones (from the state)
        g, beta = gdn_gates(a, beta_raw, self.A_log, self.dt_bias, self.allow_neg_eigval, cache.state.dtype)
        initial = None if cache.owner.rows_empty() else cache.state
        o, state = self.kernels.gdn(q, k, v, g, beta, initial, True)
        cache.state.copy_(state)
        return self._output(o, gate)

    def _step(self, x: torch.Tensor, cache: GDNCache) -> torch.Tensor:
        """One token per row: one GEMM over weights stacked once per cache, then the in-place step kernels."""
        b = x.shape[0]
        if cache.in_weight is None:
            self.stack_decode_weights(cache)
        parts = F.linear(x[:, 0], cache.in_weight).split(self._projection_sizes(), dim=-1)
        qkv, a, beta_raw = parts[0], parts[-2], parts[-1]
        if self.use_short_conv:
            y = self.kernels.short_conv_step(qkv, cache.conv_weight, cache.conv)
        else:
            y = F.silu(qkv)
        q, k, v = y.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        q = q.reshape(b, 1, self.num_heads, self.head_k_dim)
        k = k.reshape(b, 1, self.num_heads, self.head_k_dim)
        v = v.reshape(b, 1, self.num_v_heads, self.head_v_dim)
        o = self.kernels.gdn_step(q, k, v, a[:, None], beta_raw[:, None], self.A_log, self.dt_bias,
                                  self.allow_neg_eigval, cache.state)
        return self._output(o, parts[1][:, None] if self.use_gate else None)

    def _projection_sizes(self) -> list[int]:
        """Output widths of the stacked input projection: q|k|v, g (with use_gate), a, b."""
        return [2 * self.key_dim + self.value_dim, *([self.value_dim] if self.use_gate else []),
                self.num_v_heads, self.num_v_heads]

    @torch.no_grad()
    def stack_decode_weights(self, cache: GDNCache) -> None:
        """The decode step's stacked weights, in the order of `_in_projections`, written in place when they
        exist (a captured graph reads them where they are), so every new generation sees current weights."""
        gate = [self.g_proj.weight] if self.use_gate else []
        cache.hold("in_weight", torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, *gate,
                                           self.a_proj.weight, self.b_proj.weight]))
        if self.use_short_conv:
            cache.hold("conv_weight", torch.cat([self.q_conv1d.weight, self.k_conv1d.weight, self.v_conv1d.weight]))

    def _output(self, o: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
        """Per-head output norm (gated by silu(g_proj x) when use_gate), then o_proj."""
        b, t = o.shape[:2]
        if gate is not None:
            o = self.o_norm(o, gate.reshape(b, t, self.num_v_heads, self.head_v_dim))
        else:
            o = self.o_norm(o)
        return self.o_proj(o.reshape(b, t, self.value_dim))
