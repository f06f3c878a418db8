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
place the pattern is written.

Packed documents (`cu_seqlens`, q/k/v flattened to batch 1): a query also keeps to its own document.
On CUDA this is FlexAttention with a block mask made per batch straight from the document offsets
(`_document_block_mask`: block-level arithmetic on [T/128, T/128], no [T, T] evaluation; blocks inside
one document and the causal / window band are full, those a boundary or the band's edge cuts are
partial), elsewhere the dense reference with the document term in its mask.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention

from hybridlm.ops.documents import document_ids

BLOCK_SIZE = 128  # FlexAttention's default sparse block: the mask's granularity, the kernel's tile
FLEX_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MASK_BUILD_ELEMENTS = 1 << 24  # mask_mod evaluations per band while building a block mask


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                     enable_gqa: bool, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of q [B, H, T, D] over k, v [B, Hkv, T, D], each query seeing at most the last
    `window_size` positions (itself included) when a window is given. Returns [B, H, T, D].
    With `cu_seqlens` (B = 1, packed documents) a query sees only keys of its own document."""
    t = q.shape[-2]
    if cu_seqlens is not None:
        doc_ids = document_ids(cu_seqlens, t)
        if _use_flex(q):
            return _flex_causal_attention(q, k, v, window_size, enable_gqa, doc_ids)
        return attention_reference(q, k, v, window_size, enable_gqa, doc_ids)
    if window_size is None or t <= window_size:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    if _use_flex(q):
        return _flex_causal_attention(q, k, v, window_size, enable_gqa)
    return attention_reference(q, k, v, window_size, enable_gqa)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                        enable_gqa: bool, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The same function through SDPA with an explicit dense [T, T] boolean mask (and k, v repeated to the
    query heads for GQA, so that any SDPA backend can take it): the reference, and the path off CUDA.
    `doc_ids` [T]: the document of each position (packed documents); keys of other documents are masked."""
    t = q.shape[-2]
    pos = torch.arange(t, device=q.device)
    allowed = pos[:, None] >= pos[None, :]
    if window_size is not None:
        allowed = allowed & (pos[:, None] - pos[None, :] < window_size)
    if doc_ids is not None:
        allowed = allowed & (doc_ids[:, None] == doc_ids[None, :])
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def _use_flex(q: torch.Tensor) -> bool:
    """Whether a window that cuts goes through FlexAttention (tests force it on the CPU, forward only)."""
    return q.device.type == "cuda" and q.dtype in FLEX_DTYPES


def _flex_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_size: int | None,
                           enable_gqa: bool, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        # SDPA is on autocast's list and FlexAttention is not; it wants q, k, v in one dtype
        dtype = torch.get_autocast_dtype(device_type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if doc_ids is not None:
        block_mask = _document_block_mask(doc_ids, window_size)
    else:
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
    """The mask_mod of causal attention within `window_size` positions (None: no window), and, given
    `doc_ids` ([T] document index per position of the flattened row), within the query's document."""
    if doc_ids is not None:
        inner = _mask_mod(window_size)

        def document(b, h, q_idx, kv_idx):
            return inner(b, h, q_idx, kv_idx) & (doc_ids[q_idx] == doc_ids[kv_idx])
        return document
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


@torch.compiler.disable
def _document_block_mask(doc_ids: torch.Tensor, window_size: int | None) -> BlockMask:
    """The block mask of causal (+ window) attention within documents, for one batch's `doc_ids` [T]
    (non-decreasing). Blocks are classified from their first and last positions' documents, so the
    work is [T/128, T/128], not [T, T]: empty when no pair can be allowed (the kv block is after the
    queries, out of the window, or in earlier documents only), full when every pair is (one document
    spans both blocks, all keys causal and within the window, both blocks whole), else partial."""
    t = doc_ids.shape[0]
    n = -(-t // BLOCK_SIZE)
    device = doc_ids.device
    first = torch.arange(n, device=device) * BLOCK_SIZE
    last = torch.clamp(first + BLOCK_SIZE - 1, max=t - 1)
    whole = (last - first + 1) == BLOCK_SIZE
    doc_lo, doc_hi = doc_ids[first], doc_ids[last]
    q_first, q_last, k_first, k_last = first[:, None], last[:, None], first[None, :], last[None, :]
    some = (k_first <= q_last) & (doc_hi[None, :] >= doc_lo[:, None])
    every = ((k_last <= q_first) & (doc_lo[:, None] == doc_hi[:, None]) & (doc_hi[None, :] == doc_lo[:, None])
             & (doc_lo[None, :] == doc_lo[:, None]) & whole[:, None] & whole[None, :])
    if window_size is not None:
        some = some & (q_first - k_last < window_size)
        every = every & (q_last - k_first < window_size)
    full = every[None, None]
    partial = (some & ~every)[None, None]

    def ordered(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dense = blocks.to(torch.int32)
        indices = torch.argsort(dense, dim=-1, descending=True, stable=True)
        return dense.sum(dim=-1).to(torch.int32), indices.to(torch.int32)

    return BlockMask.from_kv_blocks(*ordered(partial), *ordered(full), BLOCK_SIZE=BLOCK_SIZE,
                                    mask_mod=_mask_mod(window_size, doc_ids), seq_lengths=(t, t))
