"""Document boundaries in FLA's (and FlashAttention's) varlen convention, and what the layers derive from them.

A packed batch is flattened to one row, ``[1, N]``, and ``cu_seqlens`` holds the int32 offsets of its
documents: ``[0, end_0, end_1, ..., N]`` (strictly increasing). Document ``d`` is positions
``cu_seqlens[d] : cu_seqlens[d + 1]``. Every layer that mixes positions reads the same tensor: the GDN
state and the short convolution restart at each offset, attention keeps to its document, and RoPE
counts positions from the document's start.
"""

from __future__ import annotations

import torch


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, total: int) -> None:
    """Raise ValueError unless `cu_seqlens` describes documents covering one flattened row of `total` tokens.

    Only the shape and the two ends are checked (no host read of the whole tensor): a value read costs a
    device sync, and the two ends are what a wrong flattening gets wrong."""
    if batch != 1:
        raise ValueError(f"with cu_seqlens the inputs must be flattened to batch 1 ([1, N], FLA's convention), "
                         f"got batch {batch}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must be a 1-D tensor of at least 2 offsets [0, ..., N], "
                         f"got shape {list(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"cu_seqlens must hold integers (int32, as FLA and FlashAttention take), "
                         f"got {cu_seqlens.dtype}")
    if cu_seqlens.device.type == "cpu":
        first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
        if first != 0 or last != total:
            raise ValueError(f"cu_seqlens must run from 0 to the {total} tokens of the row, got {first} .. {last}")


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """The document index of every position, ``[N]`` int64 (0 for the first document)."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:-1].to(torch.int64), positions, right=True)


def positions_in_documents(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """Each position's offset from the start of its document, ``[N]`` int64: RoPE's positions."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return positions - cu_seqlens.to(torch.int64)[document_ids(cu_seqlens, total)]


def segments(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """The documents as (start, end) pairs on the host (one device read), for per-document loops."""
    offsets = cu_seqlens.tolist()
    return list(zip(offsets[:-1], offsets[1:]))
