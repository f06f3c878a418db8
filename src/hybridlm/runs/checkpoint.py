"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds `model.safetensors`, optionally `optimizer.safetensors` +
`optimizer.json` (AdamW's tensors and its param groups), and `trainer_state.json` (step, sampler
state, best metric, config) with RNG states in `rng.safetensors`. Loading never runs code from the
file. Writes go to a hidden temporary directory that is renamed into place, so a crash mid-write
leaves the previous checkpoint intact; a failed write (a full disk) removes the temporary directory.

Integrity (`manifest.json`, digests computed while writing, `verify_checkpoint`) lives in
`hybridlm.runs.integrity`; every loader below checks the files it reads through it.

Weights that are NaN / inf are never written: `save_checkpoint` raises `NonFiniteError` first.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from hybridlm.atomic_write import dumps_strict
from hybridlm.errors import CheckpointError, NonFiniteError
from hybridlm.runs import integrity
from hybridlm.runs.integrity import (HASH_NAME, MANIFEST_FILE, MANIFEST_FORMAT, CheckpointFileError,  # noqa: F401
                                     _first_line, forget_verified, read_manifest, verify_checkpoint)

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
RNG_FILE = "rng.safetensors"


# ----------------------------------------------------------------------------------------------- saving
def save_checkpoint(path: Path, model: nn.Module | Mapping[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | Mapping[str, Any] | None,
                    trainer_state: dict, *, checksums: bool = True) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, then rename).

    `model` and `optimizer` are the objects, or their full state dicts (`optimizer.state_dict()`'s layout),
    e.g. gathered from the ranks of a sharded model.
    Raises NonFiniteError (writing nothing) when a model parameter or buffer is NaN / inf, and
    CheckpointError when the disk is full or another I/O error occurs: the temporary directory is removed
    and earlier checkpoints, including the previous version of `path`, are left as they were.
    `checksums=False` skips the manifest (for benchmarks; loaders then accept the checkpoint unverified).
    """
    path = Path(path)
    model_state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    optimizer_state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    bad = first_non_finite(model_state.items())
    if bad is not None:
        raise NonFiniteError(f"refusing to save {path}: model weights are non-finite (e.g. {bad}); "
                             "earlier checkpoints are kept")
    tmp = path.parent / f".tmp-{path.name}"
    old = path.parent / f".old-{path.name}"
    state_bytes = sum(t.numel() * t.element_size() for t in model_state.values())
    pool = integrity.hash_pool(checksums, state_bytes * (3 if optimizer_state is not None else 1))
    written: dict[str, tuple[int, str | None]] = {}
    try:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)

            def put_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
                written[name] = integrity._write_safetensors(tmp / name, tensors, {"format": "pt"}, checksums, pool)

            def put_json(name: str, data: Any, indent: int | None = None) -> None:
                written[name] = integrity._write_bytes(tmp / name, [dumps_strict(data, indent=indent).encode()],
                                                       checksums, pool)

            put_tensors(MODEL_FILE, _model_tensors(model_state))
            if optimizer_state is not None:
                tensors, meta = _optimizer_to_flat(optimizer_state)
                put_tensors(OPTIMIZER_TENSORS, tensors)
                put_json(OPTIMIZER_META, meta)
            put_tensors(RNG_FILE, _rng_tensors())
            put_json(TRAINER_STATE, trainer_state, indent=1)
            if checksums:
                written = integrity.write_manifest(tmp, written)
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
            integrity._remember(path / name, digest)
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


def _model_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with tied tensors stored once (under the alphabetically first name, as safetensors'
    save_model does); `load_model_weights` fills in the other names."""
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


def _optimizer_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
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


def read_model_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as a full state dict for `model` (on the CPU), every name present (tied
    names filled in), checked against the model's names and (unsharded) shapes before anything is loaded."""
    file = Path(path) / MODEL_FILE
    verify_checkpoint(path, [MODEL_FILE])
    if not file.is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE}; the checkpoint is incomplete")
    tensors = _load_tensors(file)
    for names in tied_names(model):
        stored = next((name for name in sorted(names) if name in tensors), None)
        for name in names:
            if stored is not None and name not in tensors:
                tensors[name] = tensors[stored]
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{file} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointFileError(file, f"does not fit the model ({name} has shape {list(tensor.shape)}, the "
                                            f"model {list(expected[name].shape)})")
    return tensors


def tied_names(model: nn.Module) -> list[list[str]]:
    """The groups of parameter names that share one tensor (tied embeddings)."""
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


_PARAM_SHAPED_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer")


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> None:
    state = read_optimizer_state(path, optimizer)
    meta_file = Path(path) / OPTIMIZER_META
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise CheckpointFileError(meta_file, f"does not fit this optimizer ({_first_line(exc)}); "
                                             "the checkpoint is corrupt or belongs to another model") from None


def read_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The checkpoint's optimizer state in `optimizer.state_dict()`'s layout, checked against `optimizer`'s
    param groups and (unsharded) parameter shapes."""
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
    saved = [len(group.get("params", [])) for group in state["param_groups"]]
    wanted = [len(group["params"]) for group in optimizer.param_groups]
    if saved != wanted or any(not isinstance(i, int) or not 0 <= i < len(params) for i in state["state"]):
        raise CheckpointFileError(meta_file, f"does not fit this optimizer (param groups of {saved} parameters, the "
                                             f"optimizer's {wanted}); the checkpoint is corrupt or belongs to "
                                             "another model")
    return state


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


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)
