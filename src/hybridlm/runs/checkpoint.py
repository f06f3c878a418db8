"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint directory holds `model.safetensors`, optionally `optimizer.safetensors` +
`optimizer.json` (AdamW's tensors and its param groups), and `trainer_state.json` (step, sampler
state, best metric, config) with RNG states in `rng.safetensors`. Loading never runs code from the
file. Writes go to a hidden temporary directory that is renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hybridlm.errors import CheckpointError

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
RNG_FILE = "rng.safetensors"


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


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta.get("scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return tensors


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    trainer_state: dict) -> Path:
    """Write a checkpoint directory atomically (temporary sibling, then rename)."""
    from safetensors.torch import save_file, save_model

    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / MODEL_FILE))
    if optimizer is not None:
        tensors, meta = _optimizer_to_flat(optimizer)
        save_file(tensors, str(tmp / OPTIMIZER_TENSORS))
        (tmp / OPTIMIZER_META).write_text(json.dumps(meta))
    save_file(_rng_tensors(), str(tmp / RNG_FILE))
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
    old = path.parent / f".old-{path.name}"
    if path.exists():
        if old.exists():
            shutil.rmtree(old)
        path.rename(old)
    tmp.rename(path)
    if old.exists():
        shutil.rmtree(old)
    return path


def read_trainer_state(path: Path) -> dict:
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise CheckpointError(f"{path} is not a checkpoint (no {TRAINER_STATE}); "
                              "pass a run directory or one of its checkpoints/<name> directories")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is corrupt ({exc.msg}); resume from another checkpoint") from None


def load_model_weights(path: Path, model: nn.Module) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    file = Path(path) / MODEL_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} has no {MODEL_FILE}; the checkpoint is incomplete")
    try:
        missing, unexpected = load_model(model, str(file), strict=False, device=_device_of(model))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"{file} cannot be read ({str(exc).splitlines()[0]}); the file is corrupt") from None
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{file} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def load_optimizer_state(path: Path, optimizer: torch.optim.Optimizer) -> None:
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / OPTIMIZER_TENSORS).is_file() or not (path / OPTIMIZER_META).is_file():
        raise CheckpointError(f"{path} holds no optimizer state (a best-model checkpoint?); "
                              "resume from a periodic or final checkpoint")
    tensors = load_file(str(path / OPTIMIZER_TENSORS))
    meta = json.loads((path / OPTIMIZER_META).read_text())
    optimizer.load_state_dict(_optimizer_from_flat(tensors, meta))


def restore_rng(path: Path) -> None:
    from safetensors.torch import load_file

    file = Path(path) / RNG_FILE
    if not file.is_file():
        return
    states = load_file(str(file))
    torch.set_rng_state(states["cpu"])
    cuda = [states[k] for k in sorted(k for k in states if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _device_of(model: nn.Module) -> str:
    return str(next(model.parameters()).device)
