"""What a sweep's command line names: model specs (preset names, layout strings, `exp7`) and members.

A model spec is either a preset name (that preset, as is) or a layout string of G and A applied to
the base config (`--preset`, default `h100_base`). Member directory names are built here so that
they are readable (`h100_deltanet__lr1e-3`, `tiny__GA`, `tiny__lr=1e-3__attention_layers=5-11`)
and safe as file names on every system.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from hybridlm.config import Config
from hybridlm.config.presets import H100_LAYOUTS, PRESETS
from hybridlm.errors import ConfigError

# the reference's architecture ablation ("experiment 7"): 13 layouts from 0 % to 100 % attention
EXP7 = "exp7"
LAYOUT_PATTERN = re.compile(r"^[GA]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


@dataclass(frozen=True)
class ModelSpec:
    """One model of a sweep: a preset used as is, or a layout string applied to the base."""

    label: str                 # group / member name stem: "h100_deltanet" or "tiny__GA"
    preset: str | None         # the preset the member's config starts from
    config_file: str | None    # a TOML file layered on the preset (only for layout strings)
    layout: str | None         # the layout string set on the base, or None for a named preset

    def overrides(self) -> list[str]:
        return [f"model.layout={toml_literal(self.layout)}"] if self.layout else []


def expand_names(text: str) -> list[str]:
    """'exp7,GA' -> the 13 reference preset names then 'GA'; empty items are dropped."""
    names: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        names.extend(H100_LAYOUTS) if item.lower() == EXP7 else names.append(item)
    if not names:
        raise ConfigError("the list of presets / layouts is empty")
    return names


def parse_model_specs(text: str, base: Config, base_preset: str | None,
                      base_config_file: str | None) -> list[ModelSpec]:
    """Resolve a comma list of preset names / layout strings, checking each against the base up front."""
    specs: list[ModelSpec] = []
    base_layers = base.model.num_hidden_layers
    stem = base_label(base_preset, base_config_file)
    for name in expand_names(text):
        if name in PRESETS:
            specs.append(ModelSpec(label=name, preset=name, config_file=None, layout=None))
        elif LAYOUT_PATTERN.match(name):
            if len(name) != base_layers:
                raise ConfigError(
                    f"layout {name!r} has {len(name)} layers but the base {stem!r} has {base_layers} "
                    f"(model.num_hidden_layers); give {base_layers} letters of G and A, or another --preset")
            specs.append(ModelSpec(label=f"{stem}__{name}", preset=base_preset, config_file=base_config_file,
                                   layout=name))
        else:
            hint = " (layout strings use upper-case G and A)" if re.fullmatch(r"[GAga]+", name) else ""
            raise ConfigError(f"{name!r} is neither a preset nor a layout string{hint}; "
                              "`hybridlm presets` lists the presets, `exp7` names the 13 reference layouts")
    labels = [s.label for s in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ConfigError(f"the list names {', '.join(duplicates)} more than once")
    return specs


def base_label(base_preset: str | None, base_config_file: str | None) -> str:
    if base_preset:
        return base_preset
    if base_config_file:
        return safe_name(re.sub(r"\.toml$", "", base_config_file.replace("\\", "/").rsplit("/", 1)[-1]))
    return "base"


def parse_number_list(text: str, what: str) -> list[float]:
    """'5e-4,1e-3' -> [0.0005, 0.001]; a clear error for anything that is not a positive number."""
    values = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"{what} must be comma-separated numbers like 5e-4,1e-3; got {item!r}") from None
        if not value > 0 or math.isinf(value):
            raise ConfigError(f"{what} must be positive numbers; got {item!r}")
        values.append(value)
    if not values:
        raise ConfigError(f"{what} is empty")
    if len(set(values)) != len(values):
        raise ConfigError(f"{what} lists a value twice: {text}")
    return values


def format_lr(lr: float) -> str:
    """1e-3 -> '1e-3', 0.0015 -> '1.5e-3': short, exact enough to name a directory."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_value(value: Any) -> str:
    """A grid value as a name fragment: [5, 11] -> '5-11', [] -> 'none', 0.002 -> '2e-3'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        text = f"{value:g}"
        return format_lr(value) if ("e" in text or 0 < abs(value) < 0.01) else text
    if isinstance(value, (list, tuple)):
        return "-".join(format_value(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return "-".join(f"{k}{format_value(v)}" for k, v in sorted(value.items())) or "none"
    if value is None:
        return "none"
    return safe_name(str(value))


def safe_name(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("_.") or "x"


def toml_literal(value: Any) -> str:
    """A value as the TOML literal `--set key=...` parses back to the same value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf" if value < 0 else "nan")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "none"
    raise ConfigError(f"cannot write {value!r} as a config value")


def unique_names(names: list[str]) -> list[str]:
    """Append __2, __3 ... to repeated names (two grid values that print alike)."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}__{seen[name]}")
    return out
