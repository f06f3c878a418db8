"""Tokenise the spooled documents in worker processes and append the ids to train/val files.

Why processes: on a small machine HF tokenizers' own thread pool does not reliably use all cores
from one Python process, while N forked workers, each tokenising single-threaded, scale
with the cores. Workers get byte ranges of the document store (no text is pickled) and return
numpy arrays; the parent writes them in source order, so the result does not depend on timing.

Documents longer than one work batch are tokenised in pieces when the tokenizer is plain
byte-level BPE (GPT-2 style): its pre-tokeniser always splits between a non-space and a space
character, so ids of the pieces concatenate to the ids of the whole (tests check this).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import tokenizers
from tqdm import tqdm

from .doc_store import read_range
from .split import Piece
from .tokenizer import Tokenizer

_MAX_BATCH_BYTES = 1 << 20
_MIN_BATCH_BYTES = 64 << 10
_PARALLEL_MIN_BYTES = 2 << 20  # below this, starting workers costs more than it saves
# ASCII only, so the same characters count as space / non-space for Python and for the tokenizer's regex.
_SAFE_CUT = re.compile(rb"[A-Za-z0-9.,;:!?)\]'\"](?=[ \n])")

# (start, end, is_val, add_eos): one slice of the document store for one call of the tokenizer.
WorkItem = tuple[int, int, bool, bool]


@dataclass
class TokenCounts:
    train_tokens: int = 0
    val_tokens: int = 0


def resolve_num_workers(num_workers: int) -> int:
    """0 means one worker per available core, at most 8."""
    if num_workers > 0:
        return num_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 8))


def tokenize_pieces(store_path: Path, pieces: list[Piece], tokenizer: Tokenizer, dtype: np.dtype,
                    num_workers: int, progress: bool, train_out: BinaryIO, val_out: BinaryIO) -> TokenCounts:
    """Tokenise every piece (eos appended), writing training ids to `train_out`, validation ids to `val_out`."""
    total_bytes = sum(p.end - p.start for p in pieces)
    workers = resolve_num_workers(num_workers)
    if total_bytes < _PARALLEL_MIN_BYTES:
        workers = 1
    batch_bytes = int(min(_MAX_BATCH_BYTES, max(_MIN_BATCH_BYTES, total_bytes // (workers * 16))))
    batches = list(_plan_batches(store_path, pieces, batch_bytes, tokenizer.splits_at_whitespace))
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", leave=False,
               disable=not progress or not sys.stderr.isatty())
    counts = TokenCounts()
    try:
        for items, arrays in _run(batches, tokenizer, store_path, dtype, workers):
            for (start, end, is_val, _), ids in zip(items, arrays):
                (val_out if is_val else train_out).write(ids.tobytes())
                if is_val:
                    counts.val_tokens += len(ids)
                else:
                    counts.train_tokens += len(ids)
            bar.update(sum(end - start for start, end, _, _ in items))
    finally:
        bar.close()
    return counts


def _plan_batches(store_path: Path, pieces: list[Piece], batch_bytes: int,
                  can_split: bool) -> Iterator[list[WorkItem]]:
    """Group pieces into batches of about `batch_bytes`, splitting long pieces when that is exact."""
    batch: list[WorkItem] = []
    size = 0
    for piece in pieces:
        items = _split_piece(store_path, piece, batch_bytes) if can_split else [
            (piece.start, piece.end, piece.is_val, True)]
        for item in items:
            batch.append(item)
            size += item[1] - item[0]
            if size >= batch_bytes:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _split_piece(store_path: Path, piece: Piece, chunk: int) -> list[WorkItem]:
    if piece.end - piece.start <= chunk:
        return [(piece.start, piece.end, piece.is_val, True)]
    data = read_range(store_path, piece.start, piece.end)
    cuts = [0]
    while len(data) - cuts[-1] > chunk:
        match = _SAFE_CUT.search(data, cuts[-1] + chunk)
        if match is None:
            break
        cuts.append(match.end())
    cuts.append(len(data))
    return [(piece.start + a, piece.start + b, piece.is_val, b == len(data)) for a, b in zip(cuts, cuts[1:])]


def _run(batches: list[list[WorkItem]], tokenizer: Tokenizer, store_path: Path, dtype: np.dtype,
         workers: int) -> Iterator[tuple[list[WorkItem], list[np.ndarray]]]:
    """Yield (batch, ids per item) in batch order, from `workers` processes (or inline for one)."""
    if workers == 1:
        _WORKER.update(hf=tokenizer.hf, path=store_path, eos=tokenizer.eos_id, dtype=dtype)
        try:
            for batch in batches:
                yield batch, _tokenize_batch(batch)
        finally:
            _WORKER.clear()
        return
    fork = sys.platform.startswith("linux")  # fork is cheap and safe there; elsewhere workers are spawned
    context = multiprocessing.get_context("fork" if fork else "spawn")
    _WORKER["hf"] = tokenizer.hf  # inherited by forked workers; spawned ones rebuild it from JSON
    init_args = (None if fork else tokenizer.hf.to_str(), str(store_path), tokenizer.eos_id, np.dtype(dtype).str)
    saved_env = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # workers are single-threaded; silences the fork warning
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=init_args) as pool:
            pending: collections.deque[tuple[list[WorkItem], Future]] = collections.deque()
            queue = iter(batches)
            for batch in queue:  # keep a bounded number of batches in flight (memory stays flat)
                pending.append((batch, pool.submit(_tokenize_batch, batch)))
                if len(pending) >= 3 * workers:
                    break
            while pending:
                batch, future = pending.popleft()
                yield batch, future.result()
                following = next(queue, None)
                if following is not None:
                    pending.append((following, pool.submit(_tokenize_batch, following)))
    finally:
        _WORKER.clear()
        if saved_env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved_env


_WORKER: dict = {}


def _init_worker(tokenizer_json: str | None, store_path: str, eos_id: int, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if tokenizer_json is not None:
        _WORKER["hf"] = tokenizers.Tokenizer.from_str(tokenizer_json)
    _WORKER.update(path=Path(store_path), eos=eos_id, dtype=np.dtype(dtype))


def _tokenize_batch(batch: list[WorkItem]) -> list[np.ndarray]:
    path, eos, dtype = _WORKER["path"], _WORKER["eos"], _WORKER["dtype"]
    with open(path, "rb") as f:
        texts = []
        for start, end, _, _ in batch:
            f.seek(start)
            texts.append(f.read(end - start).decode("utf-8"))
    encodings = _WORKER["hf"].encode_batch(texts, add_special_tokens=False)
    out = []
    for encoding, (_, _, _, add_eos) in zip(encodings, batch):
        ids = encoding.ids
        if add_eos:
            ids.append(eos)
        out.append(np.array(ids, dtype=dtype))
    return out
