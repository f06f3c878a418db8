"""Softmax attention mixer (FLA's `Attention` names): RoPE, GQA, sliding window.

No flash-attn dependency. Without a KV cache, `hybridlm.ops.attention.causal_attention` runs it: SDPA's
flash kernel when the mask is plain causal, FlexAttention with a cached block mask on CUDA when a
sliding window cuts (the sequence is longer than the window).

With a cache (`model/cache.py`, keys stored RoPE'd in slots), a chunk of tokens (a prefill) on an empty
cache runs the same training kernels and writes its keys; a chunk after earlier tokens attends over the
held keys in order plus its own through SDPA with an explicit mask. A one-token step attends over the
whole preallocated buffer with the step's mask: the same shapes at every position (a CUDA graph replays
it; SDPA plans its kernel once, not per KV length), and the group of query heads sharing a kv head
folded into SDPA's query axis, so GQA never repeats the cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.cache import KVCache
from hybridlm.model.rotary import RotaryEmbedding, apply_rotary, rotary_cos_sin
from hybridlm.ops.attention import causal_attention
from hybridlm.ops.documents import positions_in_documents

# The one-query step never takes cuDNN's attention (it plans per shape; the issue measured 14.7 ms a call)
STEP_BACKENDS = [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]


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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, hidden]. `cu_seqlens` (training / scoring of packed documents, B = 1): each document
        attends within itself, its RoPE positions counted from its start."""
        b, t, _ = x.shape
        if cache is not None and cu_seqlens is not None:
            raise ValueError("packed documents (cu_seqlens) are for training and scoring, not with a KV cache")
        if cache is not None and t == 1:
            return self.o_proj(self._step(x, cache).transpose(1, 2).reshape(b, 1, -1))
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        if cache is None:  # training, scoring
            positions = None if cu_seqlens is None else positions_in_documents(cu_seqlens, t)
            q, k = self.rotary(q, k, positions=positions)
            q, k, v = (z.transpose(1, 2) for z in (q, k, v))
            o = causal_attention(q, k, v, self.window_size, self.num_kv_heads != self.num_heads, cu_seqlens)
        else:
            o = self._chunk(q, k, v, cache)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, -1))

    def _step(self, x: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row, x [B, 1, hidden]: one GEMM over q|k|v weights stacked once per cache, one
        rotation of q and k together, then attention over every slot of the buffer, masked."""
        b = x.shape[0]
        if cache.in_weight is None:
            self.stack_decode_weights(cache)
        kv_dim = self.num_kv_heads * self.head_dim
        qkv = F.linear(x[:, 0], cache.in_weight, cache.in_bias)
        qk, v = qkv.split([self.num_heads * self.head_dim + kv_dim, kv_dim], dim=-1)
        qk = qk.view(b, 1, self.num_heads + self.num_kv_heads, self.head_dim)
        v = v.view(b, self.num_kv_heads, 1, self.head_dim)
        cache.ensure(v)
        context = cache.owner.step_context(cache.k.dtype)
        qk = apply_rotary(qk, context.cos, context.sin)
        q, k = qk.split([self.num_heads, self.num_kv_heads], dim=2)
        cache.write_step(k.transpose(1, 2), v, context.slot)
        group = self.num_heads // self.num_kv_heads  # query head h reads kv head h // group, as SDPA's GQA
        queries = q.reshape(b, self.num_kv_heads, group, self.head_dim).to(cache.k.dtype)
        with sdpa_kernel(STEP_BACKENDS):
            o = F.scaled_dot_product_attention(queries, cache.k, cache.v, attn_mask=context.bias)
        return o.reshape(b, self.num_heads, 1, self.head_dim).to(x.dtype)

    @torch.no_grad()
    def stack_decode_weights(self, cache: KVCache) -> None:
        """The step's stacked q|k|v weight (and bias), written in place when it exists (a captured graph reads
        it where it is), so every new generation sees the current weights."""
        cache.hold("in_weight", torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight]))
        if self.q_proj.bias is not None:
            cache.hold("in_bias", torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias]))

    def _chunk(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """T > 1 tokens per row, q, k, v [B, T, heads, D], after whatever the cache holds."""
        owner, t = cache.owner, q.shape[1]
        first = owner.length
        owner.ensure_rows(q.shape[0], q.device)
        positions = owner.positions(t, q.device)
        cos, sin = rotary_cos_sin(self.rotary.inv_freq, positions, q.dtype)
        cos, sin = (c[:, :, None, :] if c.ndim == 3 else c[None, :, None, :] for c in (cos, sin))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        gqa = self.num_kv_heads != self.num_heads
        cache.ensure(k)
        owner.ensure_capacity(first + t)
        if owner.rows_empty():  # a prefill: the training kernels
            o = causal_attention(q, k, v, self.window_size, gqa)
        else:
            low = max(0, first - owner.capacity, min(owner.start_host))
            past_k, past_v = cache.past(low, first)
            keys = torch.cat([past_k.to(k.dtype), k], dim=2)
            values = torch.cat([past_v.to(v.dtype), v], dim=2)
            key_pos = torch.arange(low, first + t, device=q.device)
            query_pos = torch.arange(first, first + t, device=q.device)[:, None]
            allowed = key_pos <= query_pos
            if self.window_size is not None:
                allowed = allowed & (query_pos - key_pos < self.window_size)
            allowed = allowed & (key_pos >= owner.start[:, None, None])  # [B, T, S]: not before the row's start
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed[:, None], enable_gqa=gqa)
        cache.write(k, v, first)
        return o
