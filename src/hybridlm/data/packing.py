"""Document-aware batches: the same token windows as the stream, with their document boundaries.

`data.packing`:
- "stream" (the default, the seed's behaviour): a batch is the `[B, T + 1]` tensor of windows; every
  window is one sequence, whatever documents it spans.
- "documents": the same windows, flattened to one row `[1, B * T]` with `cu_seqlens`, the int32 offsets
  of its documents (FLA's varlen convention), so that no layer carries anything across a boundary.

Row packing rule. The token stream is every document followed by the eos id, laid end to end; a row
(window) of T inputs takes the next T tokens of it. That is greedy packing of whole documents in
order, where a document longer than what is left of the row continues at the start of the next
window of the stream (window i + 1) -- as its own segment, since rows share nothing. Documents are
never cut at seq_len or dropped, no padding is added, and both packings serve exactly the same tokens
in the same order (the sampler's shuffling, state and resume are unchanged), so a stream run and a
documents run differ only in what each token may see.

Boundaries. A document ends with its eos token; the next position starts a new document, and so does
every row's first position. The target at an eos position is the first token of the next document:
it would be predicted from the previous document, so its label is IGNORE_LABEL and the loss skips
it. The eos token itself stays a target (predicted from its own document): the model learns where
documents end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridlm.errors import DataError

PACKINGS = ("stream", "documents")
IGNORE_LABEL = -100  # the loss's ignore index (hybridlm.ops.cross_entropy.IGNORE_INDEX); data imports no model code


@dataclass
class DocumentBatch:
    """One batch of packed documents, flattened: `inputs`, `labels` [1, B * T] int64 and `cu_seqlens`
    [N + 1] int32 (`N` segments: documents, or the parts of them that the row holds)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    cu_seqlens: torch.Tensor
    rows: int

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "DocumentBatch":
        """On `device` (asynchronously from pinned memory)."""
        move = (lambda t: t.to(device, non_blocking=non_blocking and t.is_pinned()))
        return DocumentBatch(move(self.inputs), move(self.labels), move(self.cu_seqlens), self.rows)

    def pin_memory(self) -> "DocumentBatch":
        return DocumentBatch(self.inputs.pin_memory(), self.labels.pin_memory(), self.cu_seqlens.pin_memory(),
                             self.rows)

    @property
    def num_documents(self) -> int:
        return self.cu_seqlens.numel() - 1


def pack_documents(windows: torch.Tensor, eos_id: int) -> DocumentBatch:
    """The document batch of `windows` [B, T + 1] (consecutive tokens of the stream per row)."""
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise DataError(f"windows must be [B, T + 1] with T >= 1, got {list(windows.shape)}")
    rows, width = windows.shape
    inputs, targets = windows[:, :-1], windows[:, 1:]
    ends = inputs == eos_id  # the last position of a document (its eos)
    labels = targets.masked_fill(ends, IGNORE_LABEL)
    starts = torch.zeros_like(ends)
    starts[:, 0] = True  # every row starts a segment
    starts[:, 1:] = ends[:, :-1]
    offsets = torch.nonzero(starts.reshape(-1)).reshape(-1)
    total = torch.tensor([rows * (width - 1)], dtype=offsets.dtype)
    cu_seqlens = torch.cat([offsets, total]).to(torch.int32)
    return DocumentBatch(inputs.reshape(1, -1).contiguous(), labels.reshape(1, -1).contiguous(), cu_seqlens, rows)


def check_packing(packing: str, eos_id: int | None) -> None:
    """One-line errors for a packing that cannot run."""
    if packing not in PACKINGS:
        raise DataError(f"data.packing is {packing!r}; use 'stream' or 'documents'")
    if packing == "documents" and eos_id is None:
        raise DataError("data.packing = 'documents' needs a tokenizer with an end-of-document (eos) token, "
                        "and this one has none; use data.packing = 'stream' or a tokenizer with eos")


def batch_for(windows: torch.Tensor, packing: str, eos_id: int | None) -> torch.Tensor | DocumentBatch:
    """What a step trains on: the windows themselves ("stream") or their document batch ("documents")."""
    if packing == "stream":
        return windows
    check_packing(packing, eos_id)
    return pack_documents(windows, eos_id)
