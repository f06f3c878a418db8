"""Decoding state for every layer: preallocated, updated in place, the position kept on the device.

GDN layers keep their recurrent state `[B, HV, K, V]` (float32) and the last K inputs of their short
convolution `[B, D, K]` (channels first, oldest first: the layout of FLA's `causal_conv1d_update`), so a
new token costs the same whatever the length so far. Attention layers keep RoPE'd keys and values
`[B, Hkv, L, D]` in L slots, position j in slot j mod L: L covers the whole length (`max_length`), or is a
ring of `window` slots when a sliding window is shorter, which then holds exactly what a query may see.
Nothing is concatenated per token, and a one-token step reads and writes the same tensors at every
position, the position itself being a device tensor (`StepContext`): what a CUDA graph replays.

Rows may begin at different positions. Batched prompts of different lengths end together at position P
(right-aligned); `start[b]` is row b's first position: attention never sees the slots before it, rotary
positions count from it, and each row's GDN state is prefilled without the others (`rows`), so padding
never enters any state.

Without `max_length` (the model's own `new_cache()`) the buffers are allocated on first use, and the
attention buffer doubles when it is full (a new allocation, so `version` changes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from hybridlm.errors import HybridLMError
from hybridlm.model.rotary import rotary_cos_sin

GROWABLE_START = 256  # positions of a growable attention buffer before its first doubling
ALIGN = 64            # linear buffers round up to this many slots (aligned masks for SDPA's kernels)


class CacheFullError(HybridLMError):
    """More positions than the cache was allocated for."""


@dataclass(frozen=True)
class GDNLayerSpec:
    value_heads: int
    head_k_dim: int
    head_v_dim: int
    conv_channels: int  # 2 * key_dim + value_dim: the one short convolution over q|k|v
    conv_size: int      # 0 without a short convolution


@dataclass(frozen=True)
class AttentionLayerSpec:
    kv_heads: int
    head_dim: int


@dataclass
class StepContext:
    """What every attention layer of a one-token step shares, computed once per step on the device."""

    slot: torch.Tensor  # [1] long: the slot this token's key and value go to
    bias: torch.Tensor  # [B, 1, 1, L] 0 where the token may look, -inf elsewhere (the cache's dtype)
    cos: torch.Tensor   # [B, 1, 1, D] rotary angles at each row's position
    sin: torch.Tensor


class _LayerCache:
    def hold(self, name: str, value: torch.Tensor) -> None:
        """Keep `value` (stacked decode weights) as attribute `name`: copied into the tensor already held
        when it fits, so a graph captured on that tensor reads the new values."""
        held = getattr(self, name)
        if held is None or held.shape != value.shape or held.dtype != value.dtype:
            setattr(self, name, value)
        else:
            held.copy_(value)


class GDNCache(_LayerCache):
    """One GDN layer's state and short-conv tail, plus the stacked weights its decode step reads (they live
    with the cache so that a captured graph finds them where it read them)."""

    def __init__(self, owner: ModelCache, spec: GDNLayerSpec, state: torch.Tensor | None = None,
                 conv: torch.Tensor | None = None):
        self.owner, self.spec, self.state, self.conv = owner, spec, state, conv
        self.in_weight: torch.Tensor | None = None    # q|k|v|g|a|b projection weights, stacked once
        self.conv_weight: torch.Tensor | None = None  # q|k|v conv weights [D, 1, K]

    def allocate(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        s = self.spec
        state_dtype = torch.promote_types(dtype, torch.float32)
        self.state = torch.zeros(batch, s.value_heads, s.head_k_dim, s.head_v_dim, device=device, dtype=state_dtype)
        if s.conv_size:
            self.conv = torch.zeros(batch, s.conv_channels, s.conv_size, device=device, dtype=dtype)

    def ensure(self, x: torch.Tensor) -> None:
        """Allocate on first use, for the batch, device and dtype of the layer input x."""
        if self.state is None:
            self.owner.ensure_rows(x.shape[0], x.device)
            self.allocate(x.shape[0], x.device, x.dtype)

    def store_conv_inputs(self, qkv: torch.Tensor) -> None:
        """Keep the last K conv inputs after a chunk qkv [B, T, D] (earlier ones from the state)."""
        full = torch.cat([self.conv, qkv.transpose(1, 2).to(self.conv.dtype)], dim=-1)
        self.conv.copy_(full[:, :, full.shape[-1] - self.spec.conv_size:])

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.state, self.conv) if t is not None]

    def reset(self) -> None:
        for t in self.tensors():
            t.zero_()

    def view(self, owner: ModelCache, rows: slice) -> GDNCache:
        view = GDNCache(owner, self.spec, self.state[rows], None if self.conv is None else self.conv[rows])
        view.in_weight, view.conv_weight = self.in_weight, self.conv_weight
        return view


class KVCache(_LayerCache):
    """One attention layer's keys and values [B, Hkv, L, D], position j in slot j mod L, plus the stacked
    weights its decode step reads."""

    def __init__(self, owner: ModelCache, spec: AttentionLayerSpec, k: torch.Tensor | None = None,
                 v: torch.Tensor | None = None):
        self.owner, self.spec, self.k, self.v = owner, spec, k, v
        self.in_weight: torch.Tensor | None = None  # q|k|v projection weights (and biases), stacked once
        self.in_bias: torch.Tensor | None = None

    def allocate(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, self.spec.kv_heads, self.owner.capacity, self.spec.head_dim)
        # zeros, not empty: masked slots get weight 0, and 0 * NaN garbage would still be NaN
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def ensure(self, k: torch.Tensor) -> None:
        """Allocate on first use, for the batch, device and dtype of the keys k [B, Hkv, T, D]."""
        if self.k is None:
            self.owner.ensure_rows(k.shape[0], k.device)
            self.allocate(k.shape[0], k.device, k.dtype)

    def write(self, k: torch.Tensor, v: torch.Tensor, first: int) -> None:
        """Store keys and values [B, Hkv, T, D] of positions first .. first+T-1 (the last L of them)."""
        t, slots = k.shape[2], self.owner.capacity
        keep = min(t, slots)
        index = torch.arange(first + t - keep, first + t, device=k.device) % slots
        self.k.index_copy_(2, index, k[:, :, t - keep:].to(self.k.dtype))
        self.v.index_copy_(2, index, v[:, :, t - keep:].to(self.v.dtype))

    def write_step(self, k: torch.Tensor, v: torch.Tensor, slot: torch.Tensor) -> None:
        """Store one token's key and value [B, Hkv, 1, D] in `slot` (a device tensor)."""
        self.k.index_copy_(2, slot, k.to(self.k.dtype))
        self.v.index_copy_(2, slot, v.to(self.v.dtype))

    def past(self, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of positions low .. high-1 in order (all of them still held)."""
        index = torch.arange(low, high, device=self.k.device) % self.owner.capacity
        return self.k.index_select(2, index), self.v.index_select(2, index)

    def grow(self, capacity: int) -> None:
        """A longer linear buffer (never a ring): position j stays in slot j."""
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:2], capacity, old.shape[3])
            new[:, :, :old.shape[2]] = old
            setattr(self, name, new)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.k, self.v) if t is not None]

    def reset(self) -> None:
        """Nothing to clear: a slot is only ever read after this cache has written it."""

    def view(self, owner: ModelCache, rows: slice) -> KVCache:
        view = KVCache(owner, self.spec, self.k[rows], self.v[rows])
        view.in_weight, view.in_bias = self.in_weight, self.in_bias
        return view


class ModelCache:
    """Every layer's decoding state and the positions they share."""

    def __init__(self, specs: list[GDNLayerSpec | AttentionLayerSpec], window: int | None,
                 inv_freq: torch.Tensor | None, batch_size: int | None = None, max_length: int | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.window, self.inv_freq, self.max_length = window, inv_freq, max_length
        self.growable = max_length is None and window is None
        if max_length is None:
            self.capacity = window if window is not None else GROWABLE_START
        else:
            linear = -(-max_length // ALIGN) * ALIGN
            self.capacity = linear if window is None else min(linear, window)
        self.layers = [GDNCache(self, s) if isinstance(s, GDNLayerSpec) else KVCache(self, s) for s in specs]
        self.length = 0          # positions written (host side)
        self.version = 0         # bumped when a buffer is reallocated (a captured graph is then stale)
        self.batch_size: int | None = None
        self.position: torch.Tensor | None = None  # the same count on the device (decode steps read it)
        self.start: torch.Tensor | None = None     # [B] long: each row's first position
        self.start_host: list[int] = []
        self._slot_ids: torch.Tensor | None = None
        self._steps = 0          # advances and resets so far: keys the memoised StepContext
        self._context: tuple[int, StepContext] | None = None
        if batch_size is not None:
            self.allocate(batch_size, torch.device(device or "cpu"), dtype or torch.float32)

    @property
    def seen_tokens(self) -> int:
        return self.length

    # ----------------------------------------------------------------------- allocation
    def allocate(self, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        """Every buffer now (a CUDA graph must see them before it is captured)."""
        self.ensure_rows(batch, device)
        for layer in self.layers:
            layer.allocate(batch, device, dtype)

    def ensure_rows(self, batch: int, device: torch.device) -> None:
        if self.position is None:
            self.batch_size = batch
            self.position = torch.zeros((), dtype=torch.long, device=device)
            self.start = torch.zeros(batch, dtype=torch.long, device=device)
            self.start_host = [0] * batch
            self._slot_ids = torch.arange(self.capacity, device=device)
        elif batch != self.batch_size:
            raise ValueError(f"this cache holds {self.batch_size} rows, got a batch of {batch}")

    def ensure_capacity(self, needed: int) -> None:
        """Room for positions up to `needed` - 1: a ring always has it; a growable buffer doubles."""
        if needed <= self.capacity or self.window == self.capacity:
            return
        if not self.growable:
            raise CacheFullError(f"the decoding cache holds {self.capacity} positions (max_length "
                                 f"{self.max_length}); {needed} are needed")
        capacity = max(needed, 2 * self.capacity)
        for layer in self.layers:
            if isinstance(layer, KVCache) and layer.k is not None:
                layer.grow(capacity)
        self.capacity = capacity
        self._slot_ids = torch.arange(capacity, device=self.position.device)
        self.version += 1
        self._context = None

    # ------------------------------------------------------------------------- positions
    def advance(self, tokens: int) -> None:
        """`tokens` more positions written by every layer (host count and device position)."""
        self.length += tokens
        self.position.add_(tokens)
        self._steps += 1

    def advance_host(self, tokens: int) -> None:
        """The host count only: a replayed CUDA graph has already moved the device position."""
        self.length += tokens
        self._steps += 1

    def rows_empty(self) -> bool:
        """Whether no row holds any token yet (a prefill can then run the training kernels)."""
        return all(s == self.length for s in self.start_host)

    def positions(self, tokens: int, device: torch.device) -> torch.Tensor:
        """Rotary positions [T] (all rows alike) or [B, T] of the next `tokens` tokens of each row."""
        steps = torch.arange(self.length, self.length + tokens, device=device)
        if len(set(self.start_host)) == 1:
            return steps - self.start_host[0]
        return steps[None, :] - self.start[:, None]

    def step_context(self, dtype: torch.dtype) -> StepContext:
        """The slot, visibility mask and rotary angles of a one-token step, from the device position
        (fixed shapes whatever the position), computed once per step for every attention layer."""
        if self._context is not None and self._context[0] == self._steps:
            return self._context[1]
        self.ensure_capacity(self.length + 1)
        i, slots = self.position, self.capacity
        slot = torch.remainder(i, slots).reshape(1)
        held = i - torch.remainder(i - self._slot_ids, slots)  # the position each slot holds (< 0: none yet)
        visible = held[None, :] >= self.start[:, None]        # [B, L]: written by this row, within the ring
        bias = torch.zeros(visible.shape, dtype=dtype, device=i.device).masked_fill_(~visible, float("-inf"))
        cos, sin = rotary_cos_sin(self.inv_freq, (i - self.start)[:, None], dtype)  # [B, 1, D]
        context = StepContext(slot, bias[:, None, None, :], cos[:, :, None, :], sin[:, :, None, :])
        self._context = (self._steps, context)
        return context

    # ------------------------------------------------------------------------- rows, resets
    def rows(self, first: int, last: int, start: int) -> ModelCache:
        """Rows first .. last-1 as a cache of their own (sharing the tensors) whose tokens begin at
        position `start`: a batch of prompts of one length prefills into it, as if alone."""
        rows = slice(first, last)
        view = copy.copy(self)
        view.layers = [layer.view(view, rows) for layer in self.layers]
        view.growable = False
        view.batch_size = last - first
        view.length = start
        view.position = torch.full((), start, dtype=torch.long, device=self.position.device)
        view.start = self.start[rows]
        view.start.fill_(start)
        view.start_host = [start] * (last - first)
        self.start_host[rows] = view.start_host
        view._context = None
        return view

    def set_length(self, length: int) -> None:
        """Every row now holds positions up to `length` - 1 (after its rows were prefilled)."""
        self.length = length
        self.position.fill_(length)
        self._steps += 1

    def reset(self) -> None:
        """Empty again, in place (the tensors a captured graph holds stay where they are)."""
        for layer in self.layers:
            layer.reset()
        self.set_length(0)
        self.start.zero_()
        self.start_host = [0] * self.batch_size

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the decoding state lives in (what a captured graph reads and writes)."""
        own = [t for t in (self.position, self.start) if t is not None]
        return own + [t for layer in self.layers for t in layer.tensors()]

    def nbytes(self) -> int:
        """Bytes of decoding state (the stacked weights not counted)."""
        return sum(t.numel() * t.element_size() for t in self.tensors())
