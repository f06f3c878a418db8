"""Checkpoint integrity: manifest.json, xxh3_128 digests, and the streaming writer that computes them.

Kept apart from `checkpoint` (the format: what is saved and how it is loaded) because this is a separate
concern with its own machinery and tuning knobs: threads, chunk sizes, a per-process cache. The format
module writes through this one and verifies through it; this module knows nothing of models or optimizers.

`manifest.json`, written last before the checkpoint directory is renamed into place, lists every file's
size and xxh3_128 digest. The digests are computed from the bytes while they are written (on a background
thread, as xxhash releases the GIL), so checksums cost next to nothing at save time. `verify_checkpoint`
checks sizes and digests; every loader checks the files it reads. A checkpoint without a manifest (written
before manifests existed) is accepted unverified. Within one process a file is hashed at most once: files
this process wrote or verified are remembered by (path, inode, size, mtime, ctime).
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch

from hybridlm.atomic_write import dumps_strict
from hybridlm.errors import CheckpointError

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "hybridlm-checkpoint-manifest"
HASH_NAME = "xxh3_128"

_CHUNK = 32 << 20  # bytes per write / hash call
_MAX_PENDING = 8  # hash calls queued behind the writer (bounds memory when tensors are copied from a GPU)
_HASH_ON_THREAD = True
_THREAD_MIN_BYTES = 64 << 20  # smaller checkpoints hash inline: a thread hand-off costs more than it saves
_READ_BUFFER = 8 << 20

# (absolute path, st_dev, st_ino, size, mtime_ns, ctime_ns) -> hex digest of a file this process wrote or hashed
_VERIFIED: dict[tuple, str] = {}


class CheckpointFileError(CheckpointError):
    """One file of a checkpoint is missing, truncated, corrupt or unusable: `file` names it, `detail` says how."""

    def __init__(self, file: str | Path, detail: str):
        self.file = Path(file)
        self.detail = detail
        super().__init__(f"{self.file} {detail}")

    @property
    def reason(self) -> str:
        """The message with the file named relative to its checkpoint directory."""
        return f"{self.file.name} {self.detail}"


# ----------------------------------------------------------------------------------------------- writing
def hash_pool(checksums: bool, nbytes: int) -> ThreadPoolExecutor | None:
    """A one-thread pool to hash on while writing about `nbytes`, or None to hash inline (or not at all)."""
    threaded = checksums and _HASH_ON_THREAD and nbytes >= _THREAD_MIN_BYTES
    return ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") if threaded else None


def write_manifest(directory: Path, written: dict[str, tuple[int, str | Future | None]]) -> dict[str, tuple[int, str]]:
    """Write `directory`/manifest.json from {file name: (size, digest or future of it)}; returns the
    resolved {file name: (size, digest)}."""
    files = {name: {"size": size, HASH_NAME: digest.result() if isinstance(digest, Future) else digest}
             for name, (size, digest) in written.items()}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "hash": HASH_NAME, "files": files}
    (directory / MANIFEST_FILE).write_text(dumps_strict(manifest, indent=1) + "\n")
    return {name: (entry["size"], entry[HASH_NAME]) for name, entry in files.items()}


class _Hasher:
    """xxh3_128 of a stream of chunks. With a pool, updates run in order on its single worker thread, so
    hashing overlaps the kernel's copy of the same bytes into the page cache."""

    def __init__(self, pool: ThreadPoolExecutor | None):
        import xxhash

        self._hash = xxhash.xxh3_128()
        self._pool = pool
        self._pending: deque[Future] = deque()

    def update(self, data) -> None:
        if self._pool is None:
            self._hash.update(data)
            return
        while len(self._pending) >= _MAX_PENDING:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._hash.update, data))

    def digest(self) -> str | Future:
        """The hex digest, or a future of it when updates are still queued (resolved before the manifest)."""
        if self._pool is None or not self._pending:
            return self._hash.hexdigest()
        self._pending.clear()  # the worker runs updates in order: the digest task runs after all of them
        return self._pool.submit(self._hash.hexdigest)


def _write_bytes(file: Path, chunks: Iterable, checksums: bool,
                 pool: ThreadPoolExecutor | None) -> tuple[int, str | Future | None]:
    hasher = _Hasher(pool) if checksums else None
    size = 0
    with open(file, "wb") as f:
        for chunk in chunks:
            if hasher is not None:
                hasher.update(chunk)
            f.write(chunk)
            size += len(chunk)
    return size, (hasher.digest() if hasher is not None else None)


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


def _write_safetensors(file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str],
                       checksums: bool, pool: ThreadPoolExecutor | None) -> tuple[int, str | Future | None]:
    """Write `tensors` in the safetensors format, streaming each tensor's memory to the file (and the hasher)
    instead of first copying all of it into one buffer. Anything this writer does not cover goes through
    safetensors' own writer and is hashed by reading the file back."""
    if sys.byteorder != "little" or any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(file), metadata=metadata)
        return file.stat().st_size, (_hash_file(file) if checksums else None)
    return _write_bytes(file, _safetensors_chunks(tensors, metadata), checksums, pool)


def _safetensors_chunks(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Iterator:
    # widest elements first, then by name: every tensor's data starts aligned to its element size
    entries = sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0]))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in entries:
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    yield len(raw).to_bytes(8, "little") + raw
    for _, tensor in entries:
        if tensor.numel() == 0:
            continue
        data = tensor.detach()
        if data.device.type != "cpu":
            data = data.cpu()
        data = data.contiguous().reshape(-1).view(torch.uint8)
        view = memoryview(data.numpy())
        for start in range(0, len(view), _CHUNK):
            yield view[start:start + _CHUNK]


# ---------------------------------------------------------------------------------------- verification
def read_manifest(path: Path) -> dict[str, dict] | None:
    """{file name: {"size": bytes, "xxh3_128": hex}} of a checkpoint, or None when it has no manifest."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointFileError(file, f"is corrupt ({_first_line(exc)}); the checkpoint cannot be verified") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get(HASH_NAME), str)
            for e in files.values()):
        raise CheckpointFileError(file, "is corrupt (not a checkpoint manifest); the checkpoint cannot be verified")
    if data.get("hash", HASH_NAME) != HASH_NAME:
        raise CheckpointFileError(file, f"uses hash {data.get('hash')!r}; this version reads {HASH_NAME} only")
    return files


def verify_checkpoint(path: Path, files: Iterable[str] | None = None, *, hash: bool = True) -> bool:
    """Check a checkpoint's files against its manifest.json: present, the listed size, the listed digest.

    `files`: only these names (those the manifest lists); default all. `hash=False` checks sizes only.
    Returns True when checked, False when the checkpoint has no manifest (older runs: accepted unverified).
    Raises CheckpointFileError (a CheckpointError) naming the first bad file. A file is hashed at most once
    per process while it stays unchanged on disk.
    """
    path = Path(path)
    entries = read_manifest(path)
    if entries is None:
        return False
    names = list(entries) if files is None else [name for name in files if name in entries]
    todo: list[tuple[Path, tuple, str]] = []
    for name in names:  # sizes first: a truncated file is reported as truncated, not as a checksum mismatch
        file, expected = path / name, entries[name]
        try:
            st = file.stat()
        except FileNotFoundError:
            raise CheckpointFileError(file, f"is missing (listed in {MANIFEST_FILE}); "
                                            "the checkpoint is incomplete") from None
        except OSError as exc:
            raise CheckpointFileError(file, f"cannot be read ({exc.strerror or exc})") from None
        if st.st_size != expected["size"]:
            if st.st_size < expected["size"]:
                raise CheckpointFileError(file, f"is truncated ({st.st_size} of {expected['size']} bytes)")
            raise CheckpointFileError(file, f"has the wrong size ({st.st_size} bytes, {MANIFEST_FILE} lists "
                                            f"{expected['size']}); the file is corrupt")
        key = _stat_key(file, st)
        if hash and _VERIFIED.get(key) != expected[HASH_NAME]:
            todo.append((file, key, expected[HASH_NAME]))
    if todo:
        digests = _hash_files([file for file, _, _ in todo])
        for (file, key, expected), digest in zip(todo, digests):
            if isinstance(digest, OSError):
                raise CheckpointFileError(file, f"cannot be read ({digest.strerror or digest})")
            if digest != expected:
                raise CheckpointFileError(file, "is corrupt (checksum mismatch)")
            _VERIFIED[key] = digest
    return True


def forget_verified() -> None:
    """Forget which files this process wrote or verified, so the next verification hashes them again.

    For tools and tests that change checkpoint files in place: a change made within the file system's
    timestamp granularity of the previous write can leave size and mtime as they were."""
    _VERIFIED.clear()


def _stat_key(file: Path, st: os.stat_result) -> tuple:
    return (str(file.absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remember(file: Path, digest: str) -> None:
    try:
        _VERIFIED[_stat_key(file, file.stat())] = digest
    except OSError:
        pass


def _hash_file(file: Path) -> str:
    import xxhash

    hasher = xxhash.xxh3_128()
    buffer = bytearray(_READ_BUFFER)
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            hasher.update(view[:n])
    return hasher.hexdigest()


def _hash_files(files: list[Path]) -> list[str | OSError]:
    """Digests of several files, read back in large chunks on parallel threads (reads and xxhash both
    release the GIL)."""

    def one(file: Path) -> str | OSError:
        try:
            return _hash_file(file)
        except OSError as exc:
            return exc

    workers = min(len(files), os.cpu_count() or 1, 4)
    if workers <= 1:
        return [one(file) for file in files]
    with ThreadPoolExecutor(workers, thread_name_prefix="checkpoint-verify") as pool:
        return list(pool.map(one, files))


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__
