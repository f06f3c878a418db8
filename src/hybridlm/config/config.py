"""The whole experiment as one typed value: model, data, train, run and fla sections.

Configs round-trip through TOML files, and `--set section.key=value` overrides are parsed as
TOML literals and type-checked against the dataclass fields, so `--set train.lr=2e-3` and
`--set model.attention_layers=[5,11]` work and `--set train.lr=fast` is a one-line error.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridlm.config.data_config import DataConfig
from hybridlm.config.read_only import ReadOnlyWhenResolved
from hybridlm.config.model_config import AttentionConfig, ModelConfig, apply_gdn_aliases
from hybridlm.config.train_config import (ACTIVATION_CHECKPOINTING, NAN_POLICIES, PARALLEL_MODES, PRECISIONS, SCHEDULES,
                                          FlaConfig, RunConfig, TrainConfig)
from hybridlm.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = ("model", "data", "train", "run", "fla")


@dataclass
class Config(ReadOnlyWhenResolved):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    fla: FlaConfig = field(default_factory=FlaConfig)

    def validate(self) -> "Config":
        self.model.validate()
        t, d = self.train, self.data
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                     "save_interval", "log_interval", "keep_checkpoints", "nan_max_skips"):
            if getattr(t, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(t, name)}")
        if t.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
        if not t.lr > 0:
            raise ConfigError(f"train.lr must be positive, got {t.lr}")
        if not 0 <= t.min_lr_ratio <= 1:
            raise ConfigError(f"train.min_lr_ratio must be within [0, 1], got {t.min_lr_ratio}")
        if t.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {t.precision!r}")
        if t.schedule not in SCHEDULES:
            raise ConfigError(f"train.schedule must be one of {', '.join(SCHEDULES)}; got {t.schedule!r}")
        if isinstance(t.compile, str) and t.compile != "auto":
            raise ConfigError(f"train.compile must be true, false or \"auto\", got {t.compile!r}")
        if t.parallel not in PARALLEL_MODES:
            raise ConfigError(f"train.parallel must be one of {', '.join(PARALLEL_MODES)}, got {t.parallel!r}")
        if t.fsdp.replicate < 1:
            raise ConfigError(f"train.fsdp.replicate must be at least 1, got {t.fsdp.replicate}")
        if t.activation_checkpointing not in ACTIVATION_CHECKPOINTING:
            raise ConfigError(f"train.activation_checkpointing must be one of {', '.join(ACTIVATION_CHECKPOINTING)}, "
                              f"got {t.activation_checkpointing!r}")
        if t.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"train.nan_policy must be one of {', '.join(NAN_POLICIES)}; got {t.nan_policy!r}")
        check_run_name(self.run.name)
        if d.seq_len <= 0:
            raise ConfigError(f"data.seq_len must be positive, got {d.seq_len}")
        if not 0 < d.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must be within (0, 1), got {d.val_fraction}")
        if d.on_exhausted not in ("repeat", "stop"):
            raise ConfigError(f"data.on_exhausted must be 'repeat' or 'stop', got {d.on_exhausted!r}")
        if d.packing not in ("stream", "documents"):
            raise ConfigError(f"data.packing must be 'stream' or 'documents', got {d.packing!r}")
        if d.packing == "documents" and t.compile is True and "gdn" in self.model.layer_types:
            raise ConfigError("data.packing = 'documents' cannot run compiled GDN blocks yet; set train.compile "
                              "to 'auto' (compiles attention blocks only) or false")
        return self

    def freeze(self) -> "Config":
        """Make this config read-only (what `resolve` returns); `copy()` gives a writable one."""
        for section in (self, self.model, self.model.attention, self.data, self.train, self.train.fsdp, self.run,
                        self.fla):
            section._mark_resolved()
        return self

    # ------------------------------------------------------------------ dicts
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: "Config | None" = None) -> "Config":
        """Build from nested dicts (a parsed TOML file); unknown sections or keys are errors."""
        config = base if base is not None else cls()
        for section, content in values.items():
            if section not in SECTIONS:
                raise ConfigError(f"unknown config section [{section}]; sections are {', '.join(SECTIONS)}")
            if not isinstance(content, dict):
                raise ConfigError(f"[{section}] must be a table of key = value pairs")
            if section == "model":
                content = apply_gdn_aliases(content, current_head_dim=config.model.head_dim)
            for key, value in content.items():
                set_value(config, f"{section}.{key}", value, validate=False)
        config.model.__post_init__()
        return config.validate()

    # ------------------------------------------------------------------- TOML
    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps(_none_as_word(self.to_dict()))

    def save(self, path: str | Path) -> None:
        from hybridlm.atomic_write import write_text_atomic

        write_text_atomic(path, self.to_toml())  # a crash mid-write keeps the previous file

    @classmethod
    def load(cls, path: str | Path, base: "Config | None" = None) -> "Config":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        return cls.from_dict(values, base=base)

    def copy(self) -> "Config":
        return Config.from_dict(_none_as_word(self.to_dict()))


NONE_WORDS = ("none", "null")


def check_run_name(name: str) -> None:
    """A run name names a directory under the runs root; it must not lead anywhere else."""
    if not isinstance(name, str):
        raise ConfigError(f"run.name must be a string, got {name!r}")
    if "/" in name or "\\" in name or "\0" in name or ".." in name or name == ".":
        raise ConfigError(f"run.name {name!r} is not a plain name (no '/', '\\' or '..'); it names a directory "
                          "under runs/, choose the output path with --out")


def _none_as_word(value: Any) -> Any:
    """TOML has no null: unset fields are written as "none", so a file fully describes its config
    (loading it over a preset must not bring the preset's values back)."""
    if isinstance(value, dict):
        return {k: _none_as_word(v) for k, v in value.items()}
    return "none" if value is None else value


def parse_assignment(text: str) -> tuple[str, Any]:
    """'train.lr=2e-3' -> ('train.lr', 0.002); bare words stay strings; none/null mean None."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value (e.g. train.lr=2e-3), got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if raw.lower() in NONE_WORDS:
        return key, None
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw


def set_value(config: Config, dotted_key: str, value: Any, validate: bool = True) -> None:
    """Assign `config.<dotted_key> = value` after checking the key exists and the type fits."""
    parts = dotted_key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        raise ConfigError(f"unknown config key {dotted_key!r}; keys look like section.name, "
                          f"with section one of {', '.join(SECTIONS)}")
    if parts[0] == "model" and len(parts) == 2:
        renamed = apply_gdn_aliases({parts[1]: value}, current_head_dim=config.model.head_dim)
        if len(renamed) == 1:
            (key, value), = renamed.items()
            parts = ["model", key]
    target: Any = config
    for i, part in enumerate(parts[:-1]):
        target = getattr(target, part)
        if not dataclasses.is_dataclass(target):
            raise ConfigError(f"unknown config key {dotted_key!r}: {'.'.join(parts[:i + 1])} has no sub-keys")
    name = parts[-1]
    hints = typing.get_type_hints(type(target))
    if name not in hints:
        known = ", ".join(f.name for f in dataclasses.fields(target))
        raise ConfigError(f"unknown config key {dotted_key!r}; known keys of {'.'.join(parts[:-1])}: {known}")
    if dataclasses.is_dataclass(hints[name]) and isinstance(value, dict):
        for sub_key, sub_value in value.items():
            set_value(config, f"{dotted_key}.{sub_key}", sub_value, validate=False)
        return
    value = _coerce(dotted_key, value, hints[name])
    setattr(target, name, value)
    # the layout has two spellings; setting one replaces the other
    if target is config.model and name == "layout" and value is not None:
        config.model.attention_layers = []
    elif target is config.model and name == "attention_layers":
        config.model.layout = None
    if validate:
        config.model.__post_init__()
        config.validate()


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against a field annotation (int, float, bool, str, list[int], X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in NONE_WORDS)):
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key} cannot be {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list like [5, 11], got {value!r}")
        return [_coerce(f"{key}[]", v, item_type) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if value is None:  # `--set train.parallel=none`: for a field that is never unset, the word itself
            return "none"
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if annotation is AttentionConfig and isinstance(value, AttentionConfig):
        return value
    raise ConfigError(f"{key} cannot be set to {value!r}")
