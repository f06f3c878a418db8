"""Softmax attention mixer (FLA's `Attention` names): RoPE, GQA, sliding window.

No flash-attn dependency. Without a KV cache, `hybridlm.ops.attention.causal_attention` runs it: SDPA's
flash kernel when the mask is plain causal, FlexAttention with a cached block mask on CUDA when a
sliding window cuts (the sequence is longer than the window). Cached decoding keeps SDPA, with an
explicit mask only where the window cuts into the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.rotary import RotaryEmbedding
from hybridlm.ops.attention import causal_attention


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        a = config.attention
        self.layer_idx = layer_idx
        self.num_heads = a.num_heads
        self.num_kv_heads = a.kv_heads
        self.head_dim = config.hidden_size // a.num_heads
        self.window_size = a.window_size
        hidden = config.hidden_size
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, hidden, bias=a.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=a.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=a.qkv_bias)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, a.rope_theta)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        offset = cache["offset"] if cache is not None else 0
        q, k = self.rotary(q, k, offset=offset)
        past = 0
        if cache is not None:
            if "k" in cache:
                past = cache["k"].shape[1]
                k = torch.cat([cache["k"], k], dim=1)
                v = torch.cat([cache["v"], v], dim=1)
            keep = k.shape[1] if self.window_size is None else min(k.shape[1], self.window_size - 1)
            # the window bounds the cache: a new query never looks further back than window-1 tokens
            cache["k"], cache["v"] = k[:, k.shape[1] - keep:], v[:, v.shape[1] - keep:]
            cache["offset"] = offset + t
        o = self._attend(q, k, v, past)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """q: [B, T, H, D] at positions past..past+T-1; k, v: [B, past+T, Hkv, D]."""
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        t, s = q.shape[2], k.shape[2]
        gqa = self.num_kv_heads != self.num_heads
        if past == 0 and t > 1:  # training, scoring, a prefill: no earlier keys
            return causal_attention(q, k, v, self.window_size, gqa)
        window_cuts = self.window_size is not None and s > self.window_size
        if not window_cuts and past == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=gqa)
        if not window_cuts and t == 1:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
        q_pos = torch.arange(past, past + t, device=q.device)[:, None]
        k_pos = torch.arange(s, device=q.device)[None, :] + (past + t - s)
        allowed = k_pos <= q_pos
        if self.window_size is not None:
            allowed = allowed & (q_pos - k_pos < self.window_size)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)
