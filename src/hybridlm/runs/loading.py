"""Load a finished (or running) run for scripting: `model, tokenizer = load_run(DIR)`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hybridlm.config import Config, resolve
from hybridlm.errors import CheckpointError, NonFiniteError
from hybridlm.runs.checkpoint import (MODEL_FILE, first_non_finite, load_model_weights, read_trainer_state,
                                      verify_checkpoint)
from hybridlm.runs.run_dir import STEP_PATTERN, RunDir, find_run_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REQUIRED_SECTIONS = ("model", "data", "train")


def load_run(path: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             kernels: str | None = None):
    """(model in eval mode, tokenizer) of a run directory or of a checkpoint inside one.

    `checkpoint`: best | final | latest | step_NNNNNN | a checkpoint path. The checkpoint is verified
    against its manifest (a corrupt one is a CheckpointError naming the bad file) and weights holding
    NaN / inf are refused with NonFiniteError.
    """
    from hybridlm.data import load_tokenizer
    from hybridlm.model import HybridLM

    run, explicit = find_run_dir(path)
    config = load_run_config(run)
    if kernels is not None:
        config = resolve(base=config, values={"model.kernels": kernels})
    if explicit is not None:
        verify_checkpoint(explicit)
        location = explicit
    else:
        location = run.resolve_checkpoint(checkpoint)
    model = HybridLM(config.model)
    load_model_weights(location, model)
    bad = first_non_finite(model.state_dict().items())
    if bad is not None:
        raise NonFiniteError(f"refusing to load {location / MODEL_FILE}: model weights are non-finite "
                             f"(e.g. {bad}); {_earlier_hint(run, location)}")
    model.to(device).eval()
    if not run.tokenizer_dir.is_dir():
        raise CheckpointError(f"{run.path} has no tokenizer/ directory; the run is incomplete")
    return model, load_tokenizer(run.tokenizer_dir)


def _earlier_hint(run: RunDir, location: Path) -> str:
    step = None
    try:
        step = read_trainer_state(location).get("step")
    except CheckpointError:
        pass
    if not isinstance(step, int):
        match = STEP_PATTERN.match(location.name)
        step = int(match.group(1)) if match else None
    earlier = [path.name for s, path in run.step_checkpoints()
               if path.resolve() != location.resolve() and (step is None or s < step)]
    if earlier:
        return f"load an earlier checkpoint instead, e.g. --checkpoint {earlier[-1]}"
    return "no earlier checkpoint (--checkpoint step_NNNNNN) is left in this run to load instead"


def load_run_config(run: RunDir) -> Config:
    """The run's config.toml; CheckpointError when it is missing or lacks [model]/[data]/[train] (ConfigError, as
    from Config.load, when it is not valid TOML)."""
    file = run.config_file
    if not file.is_file():
        raise CheckpointError(f"{run.path} has no config.toml; not a hybridlm run directory")
    try:
        values = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError:
        return resolve(file=file)  # its ConfigError: "config file … is not valid TOML: …"
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{file} is not a text file ({exc.reason}); the run directory is damaged") from None
    except OSError as exc:
        raise CheckpointError(f"{file} cannot be read ({exc.strerror or exc}); the run directory is damaged") from None
    missing = [name for name in REQUIRED_SECTIONS if not isinstance(values.get(name), dict)]
    config = resolve(file=file)  # first: its ConfigError (an unknown key, a bad value) is the more precise message
    if missing:
        raise CheckpointError(f"{file} is empty or incomplete (no [{missing[0]}] section); "
                              "the run directory is damaged")
    return config
