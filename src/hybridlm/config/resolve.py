"""The one way a run's config is built: preset -> TOML file -> `--set` overrides, validated, read-only.

The CLI, `hybridlm.train`, sweep members, the sweep base and resume all call `resolve`; nothing
else builds the config a run trains from. Resume has its own rule (`resume_changes`): a resumed
run keeps its saved config, and only settings that cannot change the experiment may differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hybridlm.config.config import Config, parse_assignment, set_value
from hybridlm.errors import ConfigError

# Settings a resumed run may change: they decide what is logged, evaluated, kept or shown, never
# which tokens are trained on or how the weights are updated. (Evaluation uses no randomness.)
# (Not eval_batches: the best checkpoint compares val losses over one validation set. Not device: with
# precision "auto" it decides fp32 or bf16.) nan_policy / nan_max_skips only act once a step is
# non-finite, which is when one resumes to change them; fla.path is a record of the clone in use (only
# one named on the command line is activated), rewritten by every run.
# How the work is spread (parallel mode, FSDP2 sharding, activation checkpointing) changes memory and
# speed, and at most the order of float additions, like the number of ranks does.
RESUME_SAFE_KEYS = (
    "train.log_interval", "train.eval_interval", "train.save_interval", "train.keep_checkpoints",
    "train.tensorboard", "train.wandb_project", "train.nan_policy", "train.nan_max_skips", "run.description",
    "fla.path", "train.parallel", "train.fsdp.reshard_after_forward", "train.fsdp.replicate",
    "train.activation_checkpointing",
)
# How a step's global batch (batch_size x grad_accum x ranks windows) is split: may change on resume as long
# as the product stays the run's global batch, which the trainer checks once the number of ranks is known
# (train/global_batch.py). Not "safe" in general: in a sweep they are part of the experiment.
RESUME_RESPLIT_KEYS = ("train.batch_size", "train.grad_accum")


def resolve(preset: str | None = None, file: str | Path | None = None, overrides: Sequence[str] = (),
            base: Config | None = None, values: Mapping[str, Any] | None = None) -> Config:
    """A validated, read-only Config.

    Order: `base` (a Config value) or the named `preset` (or the defaults), then the TOML `file`,
    then `overrides` (`section.key=value` strings, values parsed as TOML literals), then `values`
    (`{"section.key": python_value}`). Every step type-checks; the result is validated once more.
    """
    from hybridlm.config.presets import preset as named_preset

    if base is not None and preset is not None:
        raise ConfigError("give a base config or a preset name, not both")
    # copy() round-trips through the typed setters, so a preset's int 4 for a float field becomes 4.0
    config = (base if base is not None else (named_preset(preset) if preset else Config())).copy()
    if file is not None:
        config = Config.load(file, base=config)
    for assignment in overrides:
        key, value = parse_assignment(assignment)
        set_value(config, key, value, validate=False)
    for key, value in (values or {}).items():
        set_value(config, key, value, validate=False)
    config.model.__post_init__()
    return config.validate().freeze()


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs (the layout compared as a layer map)."""
    a, b = flatten(old.to_dict()), flatten(new.to_dict())
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if old.model.layout_string == new.model.layout_string:
        changed = [k for k in changed if k not in ("model.layout", "model.attention_layers")]
    return changed


def resume_changes(saved: Config, preset: str | None = None, file: str | Path | None = None,
                   overrides: Sequence[str] = ()) -> Config:
    """The saved config with the allowed changes applied; anything else is a one-line error.

    `--preset` is refused outright (a preset is a whole new experiment). A `--config` file or `--set`
    may repeat the saved values, and may change only the keys in RESUME_SAFE_KEYS (and RESUME_RESPLIT_KEYS, which
    the trainer checks against the run's global batch)."""
    if preset is not None:
        raise ConfigError(f"--preset {preset} cannot be combined with --resume: a resumed run keeps its own "
                          "config.toml (use --extend-steps N to train longer, or start a new run with --out)")
    if file is None and not overrides:
        return saved
    wanted = resolve(base=saved, file=file, overrides=overrides)
    refused = [k for k in changed_keys(saved, wanted) if k not in RESUME_SAFE_KEYS + RESUME_RESPLIT_KEYS]
    if refused:
        detail = ", ".join(f"{k} ({_value(saved, k)!r} -> {_value(wanted, k)!r})" for k in refused[:4])
        hint = " use --extend-steps N to train longer;" if "train.max_steps" in refused else ""
        raise ConfigError(f"a resumed run keeps its own config; refused: {detail}.{hint} only "
                          f"{', '.join(RESUME_SAFE_KEYS)} may change on --resume (start a new run to change more)")
    return wanted


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; nested sections (model.attention) are dotted too."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _value(config: Config, dotted: str) -> Any:
    return flatten(config.to_dict()).get(dotted)
