"""Documents spooled to one UTF-8 file while the source is read, so the source is read exactly once.

Later passes (choosing the validation documents, training a BPE, tokenising in worker processes)
read byte ranges of this file instead of going back to the source: a streamed Hugging Face
dataset is downloaded once, and workers receive (start, end) offsets instead of pickled text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


class DocumentStore:
    """Append-only store of documents; `offsets[i]:offsets[i+1]` are the UTF-8 bytes of document i."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._ends: list[int] = []
        self._size = 0

    def add_all(self, documents: Iterable[str]) -> None:
        for doc in documents:
            data = doc.encode("utf-8")
            self._file.write(data)
            self._size += len(data)
            self._ends.append(self._size)
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @property
    def num_documents(self) -> int:
        return len(self._ends)

    @property
    def offsets(self) -> np.ndarray:
        """Start byte of each document plus the total size at the end (length n+1, int64)."""
        return np.concatenate([[0], np.asarray(self._ends, dtype=np.int64)]).astype(np.int64)

    def read_bytes(self, start: int, end: int) -> bytes:
        return read_range(self.path, start, end)

    def texts(self, ranges: Iterable[tuple[int, int]]) -> Iterator[str]:
        """The text of each (start, end) byte range, read lazily (for BPE training)."""
        with open(self.path, "rb") as f:
            for start, end in ranges:
                f.seek(start)
                yield f.read(end - start).decode("utf-8")


def read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


class RangeTexts:
    """A re-iterable view of some byte ranges of a store (BPE training iterates it twice)."""

    def __init__(self, store: DocumentStore, ranges: list[tuple[int, int]]) -> None:
        self._store = store
        self._ranges = ranges

    def __iter__(self) -> Iterator[str]:
        return self._store.texts(self._ranges)
