"""`prepare_data`: tokenise a source once into memory-mapped train/val token files, then reuse them.

The cache directory is keyed by everything the tokens depend on (source and its files' sizes and
mtimes, doc_limit, text_field, tokenizer fingerprint, val_fraction, split seed) and NOT by
seq_len or batch size, so every model shape trains on the same cached tokens. A second call with
the same settings only opens the files. Each document is followed by the eos id.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tokenizers

from hybridlm.config.data_config import DataConfig
from hybridlm.errors import DataError

from .bpe import parse_bpe_spec
from .cache import cache_root, exclusive_lock, hybridlm_version, readable_slug, stable_hash
from .doc_store import DocumentStore, RangeTexts
from .sources import ResolvedSource, iter_documents, resolve_source
from .split import choose_validation
from .tokenize_parallel import tokenize_pieces
from .tokenizer import Tokenizer, get_tokenizer, load_tokenizer

SHARDS_FORMAT = 2
MANIFEST_FILE = "manifest.json"
_log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Token ids of both splits (read-only memmaps), the tokenizer, and what produced them."""

    train_tokens: np.memmap
    val_tokens: np.memmap
    tokenizer: Tokenizer
    manifest: dict
    cache_path: Path


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in 16 bits (vocab_size <= 65536), else uint32: half the disk and RAM."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def prepare_data(cfg: DataConfig, progress: bool = True) -> PreparedData:
    """Tokenised train/val splits of `cfg.source`, built on the first call and read from the cache after.

    Every input problem raises a one-line `DataError` here, before any training starts. With
    `progress`, a progress bar (only on a terminal) and one summary line are printed to stderr.
    """
    _check_config(cfg)
    source = resolve_source(cfg.source)
    root = cache_root(cfg.cache_dir)
    tokenizer: Tokenizer | None = None
    if cfg.tokenizer.strip().startswith("bpe:"):  # trained on the training split, so built with the shards
        tokenizer_identity = f"bpe:{parse_bpe_spec(cfg.tokenizer.strip())} tokenizers {tokenizers.__version__}"
    else:
        tokenizer = get_tokenizer(cfg.tokenizer, cache_dir=root)
        tokenizer_identity = tokenizer.fingerprint
    key = stable_hash({"format": SHARDS_FORMAT, "source": source.identity(), "doc_limit": cfg.doc_limit,
                       "text_field": cfg.text_field, "tokenizer": tokenizer_identity,
                       "val_fraction": cfg.val_fraction, "split_seed": cfg.seed})
    path = root / "shards" / f"{readable_slug(cfg.source, cfg.tokenizer)}-{key}"
    started = time.perf_counter()
    with exclusive_lock(path.parent / f"{path.name}.lock"):
        cache_hit = (path / MANIFEST_FILE).is_file()
        if not cache_hit:
            _build(path, cfg, source, tokenizer, root, key, progress)
    data = _load(path, tokenizer, cfg)
    summary = _summary(data, cache_hit, time.perf_counter() - started)
    _log.info(summary)
    if progress:
        print(summary, file=sys.stderr)
    return data


def _check_config(cfg: DataConfig) -> None:
    problems = []
    if not isinstance(cfg.seq_len, int) or cfg.seq_len < 1:
        problems.append(f"data.seq_len is {cfg.seq_len!r}; use a positive integer")
    if not isinstance(cfg.val_fraction, (int, float)) or not 0 < cfg.val_fraction < 1:
        problems.append(f"data.val_fraction is {cfg.val_fraction!r}; use a number between 0 and 1 (e.g. 0.05)")
    if cfg.doc_limit is not None and (not isinstance(cfg.doc_limit, int) or cfg.doc_limit < 1):
        problems.append(f"data.doc_limit is {cfg.doc_limit!r}; use a positive integer or leave it unset")
    if not isinstance(cfg.text_field, str) or not cfg.text_field:
        problems.append(f"data.text_field is {cfg.text_field!r}; name the field that holds the text")
    if not isinstance(cfg.num_workers, int) or cfg.num_workers < 0:
        problems.append(f"data.num_workers is {cfg.num_workers!r}; use 0 (one per core) or a positive integer")
    if cfg.on_exhausted not in ("repeat", "stop"):
        problems.append(f"data.on_exhausted is {cfg.on_exhausted!r}; use 'repeat' or 'stop'")
    if not isinstance(cfg.tokenizer, str) or not cfg.tokenizer.strip():
        problems.append("data.tokenizer is empty; use gpt2, bpe:VOCAB, a tokenizer.json path or a hub name")
    if problems:
        raise DataError(problems[0])


def _build(path: Path, cfg: DataConfig, source: ResolvedSource, tokenizer: Tokenizer | None,
           root: Path, key: str, progress: bool) -> None:
    """Write the shard directory under a temporary name and rename it into place when complete."""
    for stale in path.parent.glob(f".tmp-{path.name}-*"):  # left by a killed build (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        started = time.perf_counter()
        store = DocumentStore(tmp / "documents.txt")
        try:
            store.add_all(iter_documents(source, cfg.text_field, cfg.doc_limit))
        finally:
            store.close()
        offsets = store.offsets
        plan = choose_validation(offsets, cfg.val_fraction, cfg.seed, store.read_bytes)
        pieces = plan.pieces(offsets)
        if tokenizer is None:
            train_ranges = [(p.start, p.end) for p in pieces if not p.is_val]
            tokenizer = get_tokenizer(cfg.tokenizer, train_texts=RangeTexts(store, train_ranges), cache_dir=root)
        dtype = token_dtype(tokenizer.vocab_size)
        with open(tmp / "train.bin", "wb") as train_out, open(tmp / "val.bin", "wb") as val_out:
            counts = tokenize_pieces(store.path, pieces, tokenizer, dtype, cfg.num_workers, progress,
                                     train_out, val_out)
        store.path.unlink()
        tokenizer.save(tmp)
        val_pieces = [p for p in pieces if p.is_val]
        train_pieces = [p for p in pieces if not p.is_val]
        split = plan.describe()
        split["val_token_fraction"] = counts.val_tokens / max(counts.train_tokens + counts.val_tokens, 1)
        manifest = {
            "format": SHARDS_FORMAT,
            "hybridlm_version": hybridlm_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "cache_key": key,
            "source": cfg.source,
            "source_identity": source.identity(),
            "doc_limit": cfg.doc_limit,
            "text_field": cfg.text_field,
            "tokenizer": cfg.tokenizer,
            "tokenizer_fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "dtype": dtype.name,
            "val_fraction": cfg.val_fraction,
            "split_seed": cfg.seed,
            "documents": store.num_documents,
            "bytes": int(offsets[-1]),
            "train_documents": len(train_pieces),
            "train_tokens": counts.train_tokens,
            "train_bytes": sum(p.end - p.start for p in train_pieces),
            "val_documents": len(val_pieces),
            "val_tokens": counts.val_tokens,
            "val_bytes": sum(p.end - p.start for p in val_pieces),
            "split": split,
            "tokenize_seconds": round(time.perf_counter() - started, 3),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        if path.exists():  # an incomplete directory left by hand (complete ones are never rebuilt)
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path, tokenizer: Tokenizer | None, cfg: DataConfig) -> PreparedData:
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        dtype = np.dtype(manifest["dtype"])
        counts = {name: int(manifest[f"{name}_tokens"]) for name in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"the data cache {path} is damaged ({e}); delete that directory and run again") from None
    for name, tokens in counts.items():
        file = path / f"{name}.bin"
        if not file.is_file() or file.stat().st_size != tokens * dtype.itemsize:
            raise DataError(f"the data cache file {file} is missing or truncated; delete {path} and run again")
    window = cfg.seq_len + 1
    if counts["train"] < window:
        raise DataError(f"data.source '{cfg.source}' gives only {counts['train']} training tokens, fewer than "
                        f"one window of seq_len+1 = {window}; use more text or lower data.seq_len")
    if counts["val"] < window:
        raise DataError(f"seq_len {cfg.seq_len} is larger than the validation split ({counts['val']} tokens) of "
                        f"data.source '{cfg.source}'; lower data.seq_len or raise data.val_fraction")
    if tokenizer is None or tokenizer.fingerprint != manifest.get("tokenizer_fingerprint"):
        tokenizer = load_tokenizer(path)
    return PreparedData(
        train_tokens=np.memmap(path / "train.bin", dtype=dtype, mode="r"),
        val_tokens=np.memmap(path / "val.bin", dtype=dtype, mode="r"),
        tokenizer=tokenizer,
        manifest=manifest,
        cache_path=path,
    )


def _summary(data: PreparedData, cache_hit: bool, seconds: float) -> str:
    m = data.manifest
    how = "cache hit" if cache_hit else f"tokenized in {seconds:.1f}s"
    return (f"data: {m['source']} -> {m['train_tokens']:,} train tokens ({m['train_documents']} docs), "
            f"{m['val_tokens']:,} val tokens ({m['val_documents']} docs), tokenizer {m['tokenizer']} "
            f"(vocab {m['vocab_size']}, {m['dtype']}); {how}; {data.cache_path}")
