"""Causal softmax attention for training and scoring (no KV cache), with an optional sliding window.

`causal_attention(q, k, v, window_size, enable_gqa)` takes SDPA's layout: q [B, H, T, D], k and v
[B, Hkv, T, D]. A query at position i sees the keys at positions j with i - window < j <= i (itself and
the window - 1 tokens before it); without a window, every j <= i.

- The window does not cut (None, or T <= window): SDPA with `is_causal=True`, its flash kernel.
- The window cuts, on CUDA (float16, bfloat16, float32): FlexAttention, compiled once, with a block mask
  built once per (T, window, device) and cached. SDPA with a dense [T, T] mask would leave its flash
  kernel; the compiled FlexAttention kernel skips the blocks outside the band. H200, 12 heads of 64,
  bf16, forward and backward, window 2048: 3.9 ms at 3 x 16384 tokens (dense mask 34 ms, full causal
  flash 9.8 ms), 5.4 ms at 1 x 65536 (full causal 53 ms). Each new shape compiles (about 6 s), and
  torch.compile's recompile limit (8 per function) then falls back to the unfused kernel, so this is
  for the few fixed shapes of training and scoring. Inside a torch.compile'd model the model's compiler
  fuses it, and the cached block-mask lookup breaks the graph at each attention layer.
- The window cuts elsewhere (CPU; float64 on CUDA, which FlexAttention's kernels lack): the dense-mask
  SDPA of `attention_reference`. PyTorch 2.13 has no FlexAttention backward on the CPU, and its eager
  forward materialises the scores just as the dense mask does, only slower.

`attention_reference` is the definition written out as a dense boolean mask; the tests and
`hybridlm verify` measure the FlexAttention path against it.

The block mask is built by `_build_block_mask` from a mask_mod, in bands of query blocks so that no
[T, T] tensor exists even while the mask is made (`create_block_mask` would evaluate the mask_mod on
the whole [T, T] grid, about 12 bytes per entry: 50 GB at T = 65536; banded, 0.3 s and 180 MB on an
H200). `_mask_mod(window, doc_ids)` is the one
place the pattern is written, so a document mask can join the window there later.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention

BLOCK_SIZE = 128  # FlexAttention's default sparse block: the mask's granularity, the kernel's tile
FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MASK_BUILD_ELEMENTS = 1 << 24  # mask_mod evaluations per band while building a block mask


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                     enable_gqa: bool) -> torch.Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, Hkv, T, D], each query seeing at most the last
    `window_size` positions (itself included) when a window is given. Returns [B, H, T, D]."""
    t = q.shape[-2]
    if window_size is None or t <= window_size:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    if _use_flex(q):
        return _flex_causal_attention(q, k, v, window_size, enable_gqa)
    return attention_reference(q, k, v, window_size, enable_gqa)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                        enable_gqa: bool) -> torch.Tensor:
    """The same function through SDPA with an explicit dense [T, T] boolean mask (and k, v repeated to the
    query heads for GQA, so that any SDPA backend can take it): the reference, and the path off CUDA."""
    t = q.shape[-2]
    pos = torch.arange(t, device=q.device)
    allowed = pos[:, None] >= pos[None, :]
    if window_size is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] < window_size)
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _use_flex(q: torch.Tensor) -> bool:
    """Whether a window that cuts goes through FlexAttention (tests force it on the CPU, forward only)."""
    return q.device.type == "cuda" and q.dtype in FLEX_DTYPES


def _flex_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                           enable_gqa: bool) -> torch.Tensor:
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        # SDPA is on autocast's list and FlexAttention is not; it wants q, k, v in one dtype
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    block_mask = _window_block_mask(q.shape[-2], window_size, q.device)
    if torch.compiler.is_compiling():  # inside a compiled model: its compiler fuses FlexAttention itself
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    if device_type == "cuda":
        return _compiled_flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    with warnings.catch_warnings():
        # eager FlexAttention warns that it is unfused; off CUDA it only runs in tests, forward only
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    """FlexAttention compiled once per process (Triton kernels specialised per shape): without
    torch.compile it runs an unfused reference that materialises the scores."""
    return torch.compile(flex_attention, dynamic=False)


def _mask_mod(window_size: int | None, doc_ids: torch.Tensor | None = None):
    """The mask_mod of causal attention within `window_size` positions (None: no window).

    `doc_ids` ([B, T] document index per token) is where a document mask will join: a query will also
    need `doc_ids[b, q_idx] == doc_ids[b, kv_idx]`. Not implemented yet."""
    if doc_ids is not None:
        raise NotImplementedError("document masks are not implemented yet")
    if window_size is None:
        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
        return causal

    def sliding_window(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < window_size)
    return sliding_window


@torch.compiler.disable
def _window_block_mask(seq_len: int, window_size: int | None, device: torch.device) -> BlockMask:
    """The cached block mask for (T, window, device). Kept out of torch.compile'd graphs (a compiled model
    breaks its graph here): traced, the lookup would rebuild the mask inside the graph every step."""
    return _cached_window_block_mask(seq_len, window_size, torch.device(device))


@functools.lru_cache(maxsize=32)
def _cached_window_block_mask(seq_len: int, window_size: int | None, device: torch.device) -> BlockMask:
    return _build_block_mask(_mask_mod(window_size), None, seq_len, seq_len, device)


def _build_block_mask(mask_mod, batch: int | None, q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """What `create_block_mask(mask_mod, batch, None, q_len, kv_len, device)` builds (one mask for every
    head), evaluating mask_mod over a band of query blocks at a time: partial blocks (mask_mod applies),
    full blocks (all allowed, mask_mod skipped) and empty blocks (skipped) in BLOCK_SIZE tiles."""
    batch = 1 if batch is None else batch
    n_kv = -(-kv_len // BLOCK_SIZE)
    rows_per_band = max(1, _MASK_BUILD_ELEMENTS // (BLOCK_SIZE * n_kv * BLOCK_SIZE * batch))
    partial, full = [], []
    for first in range(0, -(-q_len // BLOCK_SIZE), rows_per_band):
        start = first * BLOCK_SIZE
        rows = min(q_len, start + rows_per_band * BLOCK_SIZE) - start

        def band_mod(b, h, q_idx, kv_idx, start=start):
            return mask_mod(b, h, q_idx + start, kv_idx)

        band = create_mask(band_mod, batch, 1, rows, kv_len, device)  # [B, 1, rows, kv_len] bool
        # positions past the sequence's end count as masked out, so edge blocks are never full
        band = F.pad(band, (0, n_kv * BLOCK_SIZE - kv_len, 0, -rows % BLOCK_SIZE))
        counts = band.view(batch, 1, -1, BLOCK_SIZE, n_kv, BLOCK_SIZE).sum(dim=(3, 5))
        full.append(counts == BLOCK_SIZE * BLOCK_SIZE)
        partial.append((counts > 0) & ~full[-1])

    def ordered(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        dense = torch.cat(blocks, dim=2).to(torch.int32)  # [B, 1, q blocks, kv blocks]
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True)  # the kept blocks first, in order
        return dense.sum(dim=-1).to(torch.int32), indices.to(torch.int32)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=BLOCK_SIZE, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len))
