"""Choose the validation documents: whole documents, about `val_fraction` of the text, seeded.

Taking the first ceil(val_fraction * n) shuffled documents goes wrong when documents differ a lot
in size (one of four books would be 25% of the text). Instead documents are visited in a seeded
order and each one that still fits in the byte budget (val_fraction of all bytes) is taken.
Only when whole documents fill less than half the budget (e.g. a single book) is one document
cut at a line boundary: its head stays in training and its tail becomes the validation text.

The budget is measured in UTF-8 bytes, not tokens, so the split does not depend on the tokenizer:
runs with gpt2 and with bpe:N are validated on exactly the same text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    """A byte range of the document store that becomes one eos-terminated document of a split."""

    doc: int
    start: int
    end: int
    is_val: bool


@dataclass(frozen=True)
class SplitPlan:
    val_docs: tuple[int, ...]  # whole documents in validation, ascending
    cut_doc: int | None  # document whose bytes [cut_offset:] go to validation, [:cut_offset] to training
    cut_offset: int | None
    target_bytes: float
    val_bytes: int
    total_bytes: int

    def pieces(self, offsets: np.ndarray) -> list[Piece]:
        """All pieces in source order; training and validation each keep their documents' order."""
        val = set(self.val_docs)
        out = []
        for doc in range(len(offsets) - 1):
            start, end = int(offsets[doc]), int(offsets[doc + 1])
            if doc == self.cut_doc:
                out.append(Piece(doc, start, start + self.cut_offset, False))
                out.append(Piece(doc, start + self.cut_offset, end, True))
            else:
                out.append(Piece(doc, start, end, doc in val))
        return out

    def describe(self) -> dict:
        return {
            "method": "whole documents" if self.cut_doc is None else "whole documents + cut tail of one",
            "val_doc_ids": list(self.val_docs),
            "cut": None if self.cut_doc is None else {"doc": self.cut_doc, "byte_offset": self.cut_offset},
            "val_byte_fraction": self.val_bytes / max(self.total_bytes, 1),
        }


def choose_validation(offsets: np.ndarray, val_fraction: float, seed: int,
                      read_bytes: Callable[[int, int], bytes]) -> SplitPlan:
    """Plan the split of the documents whose byte ranges are `offsets` (length n+1)."""
    lengths = np.diff(offsets)
    total = int(lengths.sum())
    target = val_fraction * total
    order = np.random.default_rng(seed).permutation(len(lengths))
    taken: list[int] = []
    used = 0
    smallest = int(lengths.min()) if len(lengths) else 0
    for doc in order.tolist():
        if used + lengths[doc] <= target:
            taken.append(doc)
            used += int(lengths[doc])
            if target - used < smallest:
                break
    cut_doc = cut_offset = None
    if used < target / 2:
        taken_set = set(taken)
        cut_doc = next(d for d in order.tolist() if d not in taken_set)
        start, end = int(offsets[cut_doc]), int(offsets[cut_doc + 1])
        cut_offset = _line_boundary(read_bytes(start, end), round(end - start - (target - used)))
        if cut_offset is None:  # too short to cut: it goes to validation whole
            taken.append(cut_doc)
            used += end - start
            cut_doc = None
        else:
            used += end - start - cut_offset
    return SplitPlan(tuple(sorted(taken)), cut_doc, cut_offset, target, used, total)


def _line_boundary(data: bytes, wanted: int) -> int | None:
    """A cut point near `wanted` that starts a line (else a character), leaving both parts non-empty."""
    wanted = min(max(wanted, 1), len(data) - 1)
    if wanted < 1:
        return None
    after = data.find(b"\n", wanted - 1)
    if 0 <= after < len(data) - 1:
        return after + 1
    before = data.rfind(b"\n", 0, wanted)
    if before >= 0:
        return before + 1
    while wanted < len(data) and data[wanted] & 0xC0 == 0x80:  # not inside a UTF-8 character
        wanted += 1
    return wanted if wanted < len(data) else None
