"""Load a finished (or running) run for scripting: `model, tokenizer = load_run(DIR)`."""

from __future__ import annotations

from pathlib import Path

import torch

from hybridlm.config import Config
from hybridlm.errors import CheckpointError
from hybridlm.runs.checkpoint import load_model_weights
from hybridlm.runs.run_dir import RunDir, find_run_dir


def load_run(path: str | Path, checkpoint: str = "best", device: str | torch.device = "cpu",
             kernels: str | None = None):
    """(model in eval mode, tokenizer) of a run directory or of a checkpoint inside one.

    `checkpoint`: best | final | latest | step_NNNNNN | a checkpoint path.
    """
    from hybridlm.data import load_tokenizer
    from hybridlm.model import HybridLM

    run, explicit = find_run_dir(path)
    config = load_run_config(run)
    if kernels is not None:
        config.model.kernels = kernels
    location = explicit or run.resolve_checkpoint(checkpoint)
    model = HybridLM(config.model)
    load_model_weights(location, model)
    model.to(device).eval()
    if not run.tokenizer_dir.is_dir():
        raise CheckpointError(f"{run.path} has no tokenizer/ directory; the run is incomplete")
    return model, load_tokenizer(run.tokenizer_dir)


def load_run_config(run: RunDir) -> Config:
    if not run.config_file.is_file():
        raise CheckpointError(f"{run.path} has no config.toml; not a hybridlm run directory")
    return Config.load(run.config_file)
