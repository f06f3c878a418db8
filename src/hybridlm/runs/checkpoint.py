"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds `model.safetensors`, optionally `optimizer.safetensors` +
`optimizer.json` (AdamW's tensors and its param groups), and `trainer_state.json` (step, sampler
state, best metric, config) with RNG states in `rng.safetensors`. Loading never runs code from the
file. Writes go to a hidden temporary directory that is renamed into place, so a crash mid-write
leaves the previous checkpoint intact; a failed write (a full disk) removes the temporary directory.

Integrity: `manifest.json`, written last before the rename, lists every file's size and xxh3_128
digest. The digests are computed from the bytes while they are written (on a background thread, as
xxhash releases the GIL), so checksums cost next to nothing at save time. `verify_checkpoint` checks
sizes and digests; every loader below checks the files it reads. A checkpoint without a manifest
(written before manifests existed) is accepted unverified. Within one process a file is hashed at most
once: files this process wrote or verified are remembered by (path, inode, size, mtime, ctime).

Weights that are NaN / inf are never written: `save_checkpoint` raises `NonFiniteError` first.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from hybridlm.atomic_write import dumps_strict
from hybridlm.errors import CheckpointError, NonFiniteError

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
RNG_FILE = "rng.safetensors"
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


# ----------------------------------------------------------------------------------------------- saving
def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict, *, checksums: bool = True) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, then rename).

    Raises NonFiniteError (writing nothing) when a model parameter or buffer is NaN / inf, and
    CheckpointError when the disk is full or another I/O error occurs: the temporary directory is removed
    and earlier checkpoints, including the previous version of `path`, are left as they were.
    `checksums=False` skips the manifest (for benchmarks; loaders then accept the checkpoint unverified).
    """
    path = Path(path)
    bad = first_non_finite(model.state_dict().items())
    if bad is not None:
        raise NonFiniteError(f"refusing to save {path}: model weights are non-finite (e.g. {bad}); "
                             "earlier checkpoints are kept")
    tmp = path.parent / f".tmp-{path.name}"
    old = path.parent / f".old-{path.name}"
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    threaded = checksums and _HASH_ON_THREAD and state_bytes * (3 if optimizer is not None else 1) >= _THREAD_MIN_BYTES
    pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") if threaded else None
    written: dict[str, tuple[int, str | None]] = {}
    try:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)

            def put_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
                written[name] = _write_safetensors(tmp / name, tensors, {"format": "pt"}, checksums, pool)

            def put_json(name: str, data: Any, indent: int | None = None) -> None:
                written[name] = _write_bytes(tmp / name, [dumps_strict(data, indent=indent).encode()],
                                             checksums, pool)

            put_tensors(MODEL_FILE, _model_tensors(model))
            if optimizer is not None:
                tensors, meta = _optimizer_to_flat(optimizer)
                put_tensors(OPTIMIZER_TENSORS, tensors)
                put_json(OPTIMIZER_META, meta)
            put_tensors(RNG_FILE, _rng_tensors())
            put_json(TRAINER_STATE, trainer_state, indent=1)
            if checksums:
                files = {name: {"size": size, HASH_NAME: digest.result() if isinstance(digest, Future) else digest}
                         for name, (size, digest) in written.items()}
                written = {name: (entry["size"], entry[HASH_NAME]) for name, entry in files.items()}
                manifest = {"format": MANIFEST_FORMAT, "version": 1, "hash": HASH_NAME, "files": files}
                (tmp / MANIFEST_FILE).write_text(dumps_strict(manifest, indent=1) + "\n")
            _swap_into_place(tmp, path, old)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = _io_failure(exc)
        if reason is not None:
            raise CheckpointError(f"cannot write checkpoint {path}: {reason}; earlier checkpoints are intact") from None
        raise
    if checksums:
        for name, (_, digest) in written.items():
            _remember(path / name, digest)
    return path


def _swap_into_place(tmp: Path, path: Path, old: Path) -> None:
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    try:
        tmp.rename(path)
    except OSError:
        if old.exists() and not path.exists():
            old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _io_failure(exc: BaseException) -> str | None:
    """The one-line reason when `exc` is an I/O failure (a full disk, a read-only file system), else None."""
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover
        return None
    if isinstance(exc, SafetensorError):
        text = str(exc)
        match = re.search(r'message: "([^"]+)"', text)
        if match:
            return match.group(1)
        if "io" in text.lower():
            return text.splitlines()[0] if text else "I/O error"
    return None


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


def _model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (under the alphabetically first name, as safetensors'
    save_model does); `load_model_weights` fills in the other names."""
    state = model.state_dict()
    seen: set[tuple] = set()
    tensors = {}
    for name in sorted(state):
        tensor = state[name]
        if tensor.numel():
            key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
            if key in seen:
                continue
            seen.add(key)
        tensors[name] = tensor
    return tensors


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return tensors


# ------------------------------------------------------------------------------------------- finiteness
def first_non_finite(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or inf, or None when all are finite.

    Cheap: one sum per tensor and one host sync per device; only a tensor whose sum is not finite is
    checked element by element (a sum can overflow while every element is finite).
    """
    groups: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, tensor in named_tensors:
        if (tensor.is_floating_point() or tensor.is_complex()) and tensor.numel() and not tensor.is_meta:
            groups.setdefault(tensor.device, []).append((name, tensor.detach()))
    bad = []
    for items in groups.values():
        with torch.no_grad():
            sums = torch.stack([_sum_probe(t) for _, t in items])
            flags = torch.isfinite(sums).cpu().tolist()
        for (name, tensor), ok in zip(items, flags):
            if not ok and not bool(torch.isfinite(tensor).all()):
                bad.append(name)
                break
    return bad[0] if bad else None


def _sum_probe(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_complex():
        tensor = torch.view_as_real(tensor)
    return tensor.sum(dtype=torch.float64 if tensor.dtype == torch.float64 else torch.float32).double()


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


# ------------------------------------------------------------------------------------------------ loading
def read_trainer_state(path: Path) -> dict:
    file = Path(path) / TRAINER_STATE
    verify_checkpoint(path, [TRAINER_STATE])  # first: a file the manifest lists is reported missing as such
    if not file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint (no {TRAINER_STATE}); "
                              "pass a run directory or one of its checkpoints/<name> directories")
    try:
        data = json.loads(file.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointFileError(file, f"is corrupt ({_first_line(exc)}); resume from another checkpoint") from None
    if not isinstance(data, dict):
        raise CheckpointFileError(file, "is corrupt (not a JSON object); resume from another checkpoint")
    return data


def load_model_weights(path: Path, model: nn.Module) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    file = Path(path) / MODEL_FILE
    verify_checkpoint(path, [MODEL_FILE])
    if not file.is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE}; the checkpoint is incomplete")
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=_device_of(model))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise CheckpointFileError(file, f"cannot be read ({_first_line(exc)}); the file is corrupt") from None
    except RuntimeError as exc:
        if "size mismatch" in str(exc):
            raise CheckpointFileError(file, f"does not fit the model ({_first_line(exc)})") from None
        raise CheckpointFileError(file, f"cannot be read ({_first_line(exc)}); the file is corrupt") from None
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{file} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


_PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> None:
    path = Path(path)
    tensors_file, meta_file = path / OPTIMIZER_TENSORS, path / OPTIMIZER_META
    verify_checkpoint(path, [OPTIMIZER_TENSORS, OPTIMIZER_META])
    if not tensors_file.is_file() or not meta_file.is_file():
        raise CheckpointError(f"{path} holds no optimizer state (a best-model checkpoint?); "
                              "resume from a periodic or final checkpoint")
    tensors = _load_tensors(tensors_file)
    try:
        meta = json.loads(meta_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CheckpointFileError(meta_file, f"is not valid JSON ({_first_line(exc)}); the file is corrupt") from None
    state = _optimizer_from_flat(tensors, meta, tensors_file, meta_file)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if key in _PARAM_SHAPED_STATE and torch.is_tensor(value) and index < len(params) \
                    and value.shape != params[index].shape:
                shapes = f"{list(value.shape)}, the parameter {list(params[index].shape)}"
                raise CheckpointFileError(tensors_file, f"does not fit the model ({index}.{key} has shape {shapes})")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointFileError(meta_file, f"does not fit this optimizer ({_first_line(exc)}); "
                                             "the checkpoint is corrupt or belongs to another model") from None


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: Any, tensors_file: Path | None = None,
                         meta_file: Path | None = None) -> dict:
    tensors_file = tensors_file or Path(OPTIMIZER_TENSORS)
    meta_file = meta_file or Path(OPTIMIZER_META)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = _state_key(key)
        if index is None:
            raise CheckpointFileError(tensors_file, f"holds an unexpected tensor {key!r}; the file is corrupt")
        state.setdefault(index, {})[name] = value
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list) \
            or not all(isinstance(group, dict) for group in meta["param_groups"]):
        raise CheckpointFileError(meta_file, "is corrupt (no list of param_groups)")
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, dict):
        raise CheckpointFileError(meta_file, "is corrupt (scalars is not an object)")
    for key, value in scalars.items():
        index, name = _state_key(key)
        if index is None:
            raise CheckpointFileError(meta_file, f"is corrupt (unexpected scalar {key!r})")
        state.setdefault(index, {})[name] = value
    groups = [dict(group) for group in meta["param_groups"]]
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _state_key(key: str) -> tuple[int | None, str]:
    index, sep, name = key.partition(".")
    if not sep or not name or not index.isdigit():
        return None, key
    return int(index), name


def restore_rng(path: Path) -> None:
    file = Path(path) / RNG_FILE
    verify_checkpoint(path, [RNG_FILE])  # a listed file that is missing is an error; an unlisted one is optional
    if not file.is_file():
        return
    states = _load_tensors(file)
    if "cpu" not in states:
        raise CheckpointFileError(file, "holds no CPU generator state; the file is corrupt")
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
    try:
        torch.set_rng_state(states["cpu"])
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointFileError(file, f"holds an invalid generator state ({_first_line(exc)})") from None


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointFileError(file, f"cannot be read ({_first_line(exc)}); the file is corrupt") from None


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        return lines[1]
    return lines[0] if lines else type(exc).__name__


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)
