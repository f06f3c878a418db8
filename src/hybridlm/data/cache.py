"""Where prepared data lives on disk, how its directories are named, and how they are written safely.

Layout under the cache root (``$HYBRIDLM_CACHE``, else ``~/.cache/hybridlm``; `DataConfig.cache_dir`
overrides both)::

    shards/<source>-<tokenizer>-<key>/   train.bin, val.bin, manifest.json, tokenizer.json, ...
    shards/<...>.lock                    held while one process builds that directory
    tokenizers/bpe-<vocab>-<key>.json    trained BPE tokenizers, keyed by their training text

A shard directory is built under a temporary name and renamed into place when complete, so a
crash never leaves a half-written cache behind; the lock makes concurrent processes (e.g. several
ranks of one job) wait for the first one instead of tokenising the same corpus in parallel.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, the atomic rename still protects the cache
    fcntl = None


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir` if given, else ``$HYBRIDLM_CACHE``, else ``~/.cache/hybridlm``."""
    if cache_dir:
        return Path(os.path.expanduser(str(cache_dir)))
    env = os.environ.get("HYBRIDLM_CACHE")
    return Path(os.path.expanduser(env)) if env else Path.home() / ".cache" / "hybridlm"


def stable_hash(value: object, length: int = 16) -> str:
    """Short sha256 of a JSON-serialisable value (keys sorted), for cache directory names."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def readable_slug(*parts: str, max_len: int = 48) -> str:
    """A file-name-safe hint of what a cache directory holds (the hash makes it unique)."""
    text = "-".join(re.sub(r"[^A-Za-z0-9]+", "_", Path(p.rstrip("/")).name or p).strip("_") for p in parts)
    return text[:max_len] or "data"


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_path` (created if needed) for the `with` block."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def hybridlm_version() -> str:
    try:
        import hybridlm

        version = getattr(hybridlm, "__version__", None)
        if version:
            return str(version)
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        return version("hybridlm")
    except Exception:  # not installed (running from a source checkout)
        return "unknown"
