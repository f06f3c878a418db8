"""The plan of a sweep: its members, each a preset plus `--set` overrides, and what they share.

A member's recipe is `--preset P [--config F] --set o1 --set o2 ...` (kept in sweep.json for people
to read). When the plan is first saved, each valid member's resolved config is written to
DIR/configs/NAME.toml and its sha256 recorded, and the member trains from that file:

    hybridlm train --config DIR/configs/NAME.toml --out DIR/NAME

so editing a preset later cannot change an unstarted member, and `train_args` is the exact command
to rerun a member by hand. Override order: the user's `--set` first, then what the sweep decides
(layout, steps, batch size, lr, checkpoint interval, run name), so the sweep's values win and
conflicts are refused up front.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from hybridlm.config import Config, parse_assignment, resolve
from hybridlm.config.model_config import apply_gdn_aliases
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.sweep.conditions import check_equal_conditions, token_budget
from hybridlm.sweep.specs import (ModelSpec, base_label, format_lr, format_value, parse_model_specs,
                                  parse_number_list, toml_literal, unique_names)

KINDS = ("lr", "arch", "grid")
PLAN_FIELDS = ("name", "preset", "config_file", "overrides")
INVALID_CONFIG = "invalid config"
CONFIGS_DIR = "configs"                          # DIR/configs/NAME.toml: the config each member trains from


@dataclass
class Member:
    """One run of the sweep: how to build its config, what it varies, and how far it got."""

    name: str
    preset: str | None
    config_file: str | None
    overrides: list[str]
    group: str                                   # model spec label; LR sweeps pick a best lr per group
    swept: dict[str, Any] = field(default_factory=dict)
    lr_source: str | None = None
    # resolved from the config (None for a member whose config is invalid)
    layout: str | None = None
    attention_fraction: float | None = None
    lr: float | None = None
    steps: int | None = None
    tokens: int | None = None
    params: int | None = None
    # written when the plan is first saved: "configs/NAME.toml" (under DIR) and the sha256 of its text
    planned_config: str | None = None
    config_sha256: str | None = None
    # run status, kept up to date in sweep.json by the runner
    status: str = "planned"                      # planned | running | done | failed | interrupted
    error: str | None = None
    attempts: int = 0
    device: str | None = None
    pid: int | None = None
    started: str | None = None
    finished: str | None = None
    wall_s: float | None = None
    returncode: int | None = None
    resumed_from_step: int | None = None
    eval_status: str | None = None               # None | done | failed
    eval_tasks: str | None = None
    eval_error: str | None = None

    def build_config(self) -> Config:
        """The recipe resolved now; at plan time this is written to configs/NAME.toml, which the member trains from."""
        return resolve(preset=self.preset, file=self.config_file, overrides=self.overrides)

    def train_args(self, out_dir: Path, config_path: Path | None = None) -> list[str]:
        """The `hybridlm train` command of this member: its planned config file into its directory.

        `config_path` defaults to the sweep's configs/NAME.toml next to `out_dir` (DIR/NAME). A clone
        named with `--set fla.path=...` is activated with `--fla-path`, as `train --set` would."""
        if config_path is None:
            config_path = Path(out_dir).parent / CONFIGS_DIR / f"{self.name}.toml"
        return ["train", "--config", str(config_path), "--out", str(out_dir), *self.fla_args()]

    def fla_args(self) -> list[str]:
        """`--fla-path CLONE` when the recipe names one: a fresh start and every resume activate it alike."""
        fla_path = next((value for key, value in map(parse_assignment, reversed(self.overrides))
                         if key == "fla.path"), None)
        return ["--fla-path", str(fla_path)] if fla_path else []

    @property
    def valid(self) -> bool:
        """False for a member whose config failed to resolve at plan time (it never runs)."""
        return not (self.error or "").startswith(INVALID_CONFIG)

    def same_plan(self, other: "Member") -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in PLAN_FIELDS)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Member":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class SweepPlan:
    kind: str
    out: Path
    members: list[Member]
    settings: dict[str, Any]
    conditions: dict[str, Any]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def member_dir(self, member: Member) -> Path:
        return self.out / member.name

    def config_path(self, member: Member) -> Path:
        """DIR/configs/NAME.toml: the resolved config the member trains from (written at plan time).

        Always derived from the name (member.planned_config only records it), so an edited sweep.json
        cannot point a member at a file outside the sweep."""
        return self.out / CONFIGS_DIR / f"{member.name}.toml"

    def train_args(self, member: Member) -> list[str]:
        return member.train_args(self.member_dir(member), self.config_path(member))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class BaseOptions:
    """What every sweep kind shares: the base config and the budget applied to all members."""

    out: Path
    preset: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None
    batch_size: int | None = None

    def base_config(self) -> Config:
        return resolve(preset=self.preset, file=self.config_file, overrides=self.overrides)

    def budget_overrides(self) -> list[str]:
        out = []
        if self.steps is not None:
            if self.steps <= 0:
                raise ConfigError(f"--steps must be positive, got {self.steps}")
            out.append(f"train.max_steps={self.steps}")
        if self.batch_size is not None:
            if self.batch_size <= 0:
                raise ConfigError(f"--batch-size must be positive, got {self.batch_size}")
            out.append(f"train.batch_size={self.batch_size}")
        return out

    def refuse_conflicts(self, owned: dict[str, str]) -> None:
        """A user --set of a key the sweep itself sets would be silently overwritten: refuse it."""
        if self.steps is not None:
            owned = {**owned, "train.max_steps": "--steps"}
        if self.batch_size is not None:
            owned = {**owned, "train.batch_size": "--batch-size"}
        for assignment in self.overrides:
            key, _ = parse_assignment(assignment)
            if key in owned:
                raise ConfigError(f"--set {key} conflicts with {owned[key]}, which sets it for every member")

    def settings(self) -> dict[str, Any]:
        return {"preset": self.preset, "config_file": self.config_file, "overrides": list(self.overrides),
                "steps": self.steps, "batch_size": self.batch_size}


# ------------------------------------------------------------------ the three kinds
def build_lr_plan(options: BaseOptions, presets: str, lrs: str) -> SweepPlan:
    """Every (model spec, lr) pair; `presets` holds preset names, layout strings or exp7."""
    options.refuse_conflicts({"train.lr": "--lrs"})
    values = parse_number_list(lrs, "--lrs")
    specs = parse_model_specs(presets, options.base_config(), options.preset, options.config_file)
    members = []
    for spec in specs:
        for lr in values:
            members.append(_member(options, spec, f"{spec.label}__lr{format_lr(lr)}", extra=[f"train.lr={lr!r}"],
                                   swept={"train.lr": lr}))
    settings = {**options.settings(), "presets": presets, "lrs": values}
    return _finish("lr", options, members, settings, swept_keys={"train.lr", "model"})


def build_arch_plan(options: BaseOptions, layouts: str, lr_from: str | Path | None = None,
                    lr: float | None = None) -> SweepPlan:
    """One member per layout; lr from an LR sweep (`lr_from`), a fixed `lr`, or each preset's own."""
    if lr_from is not None and lr is not None:
        raise ConfigError("give --lr-from or --lr, not both")
    owned = {"model.layout": "--layouts", "model.attention_layers": "--layouts"}
    if lr_from is not None or lr is not None:
        owned["train.lr"] = "--lr-from" if lr_from is not None else "--lr"
    options.refuse_conflicts(owned)
    specs = parse_model_specs(layouts, options.base_config(), options.preset, options.config_file)
    table = None
    if lr_from is not None:
        from hybridlm.sweep.lr_from import read_lr_table

        table = read_lr_table(Path(lr_from))
    members = []
    for spec in specs:
        swept = {"model.layout": spec.layout or spec.label}
        extra, source = [], "preset"
        if table is not None:
            probe = _member(options, spec, spec.label, extra=[], swept=swept).build_config().model
            choice = table.choose(spec.label, probe.layout_string, probe.attention_fraction)
            extra, source = [f"train.lr={choice.lr!r}"], choice.source
        elif lr is not None:
            extra, source = [f"train.lr={lr!r}"], "--lr"
        member = _member(options, spec, spec.label, extra=extra, swept=swept)
        member.lr_source = source
        members.append(member)
    settings = {**options.settings(), "layouts": layouts, "lr_from": str(Path(lr_from).resolve()) if lr_from else None,
                "lr": lr}
    return _finish("arch", options, members, settings, swept_keys={"train.lr", "model"})


def build_grid_plan(options: BaseOptions, grid: list[str]) -> SweepPlan:
    """The cartesian product of `--set-grid key=[v1, v2]` lists, applied to the base config.

    A member whose config is invalid (e.g. an attention layer index past the last layer) is kept
    in the plan as failed with its error, so the others still run."""
    if not options.preset and not options.config_file:
        raise ConfigError("sweep grid needs --preset NAME (or --config FILE) as the base")
    if not grid:
        raise ConfigError("sweep grid needs at least one --set-grid key=[value, ...]")
    base = options.base_config()
    axes: list[tuple[str, list[Any]]] = []
    for text in grid:
        key, values = parse_assignment(text)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--set-grid {key} needs a non-empty list like {key}=[1e-3, 2e-3]; got {values!r}")
        _check_key_exists(base, key)
        if key in (k for k, _ in axes):
            raise ConfigError(f"--set-grid names {key} twice")
        axes.append((key, values))
    options.refuse_conflicts({key: "--set-grid" for key, _ in axes})
    short = _short_keys([k for k, _ in axes])
    stem = base_label(options.preset, options.config_file)
    combos = list(itertools.product(*(values for _, values in axes)))
    names = unique_names([stem + "".join(f"__{short[k]}={format_value(v)}" for (k, _), v in zip(axes, combo))
                          for combo in combos])
    spec = ModelSpec(label=stem, preset=options.preset, config_file=options.config_file, layout=None)
    members = []
    for name, combo in zip(names, combos):
        extra = [f"{key}={toml_literal(value)}" for (key, _), value in zip(axes, combo)]
        members.append(_member(options, spec, name, extra=extra, swept=dict(zip((k for k, _ in axes), combo)),
                               strict=False))
    settings = {**options.settings(), "grid": list(grid)}
    return _finish("grid", options, members, settings, swept_keys={k for k, _ in axes})


# ---------------------------------------------------------------------- helpers
def _member(options: BaseOptions, spec: ModelSpec, name: str, extra: list[str], swept: dict[str, Any],
            strict: bool = True) -> Member:
    overrides = [*options.overrides, *spec.overrides(), *options.budget_overrides(), *extra]
    member = Member(name=name, preset=spec.preset, config_file=spec.config_file, overrides=overrides,
                    group=spec.label, swept=swept)
    try:
        config = member.build_config()
    except HybridLMError as exc:
        if strict:
            raise ConfigError(f"member {name}: {exc}") from None
        member.status, member.error = "failed", f"{INVALID_CONFIG}: {exc}"
        return member
    user_keys = {parse_assignment(o)[0] for o in options.overrides}
    if "train.save_interval" not in user_keys:  # periodic checkpoints, so an interrupted member resumes
        t = config.train
        interval = t.eval_interval if t.eval_interval < t.max_steps else max(1, t.max_steps // 4)
        member.overrides.append(f"train.save_interval={interval}")
    member.overrides.append(f"run.name={toml_literal(name)}")
    _resolve(member)
    return member


def _resolve(member: Member) -> None:
    """Fill the member's table fields (layout, lr, steps, tokens) from its config."""
    config = member.build_config()
    member.layout = config.model.layout_string
    member.attention_fraction = config.model.attention_fraction
    member.lr = config.train.lr
    member.steps = config.train.max_steps
    member.tokens = token_budget(config)


def _finish(kind: str, options: BaseOptions, members: list[Member], settings: dict[str, Any],
            swept_keys: set[str]) -> SweepPlan:
    configs = {m.name: m.build_config() for m in members if m.error is None}
    conditions = check_equal_conditions(configs, swept_keys)
    _count_parameters(members, configs)
    return SweepPlan(kind=kind, out=Path(options.out), members=members, settings=settings, conditions=conditions)


def _count_parameters(members: list[Member], configs: dict[str, Config]) -> None:
    from hybridlm.reports import model_parameter_counts

    for member in members:
        if member.name in configs:
            member.params = model_parameter_counts(configs[member.name])["total"]


def _check_key_exists(config: Config, key: str) -> None:
    parts = key.split(".")
    if parts[0] == "model" and len(parts) == 2:
        parts = ["model", next(iter(apply_gdn_aliases({parts[1]: 1})), parts[1])]
    target: Any = config
    for part in parts:
        if not hasattr(target, part) or part.startswith("_"):
            raise ConfigError(f"--set-grid: unknown config key {key!r}; keys look like train.lr or model.layout")
        target = getattr(target, part)


def _short_keys(keys: list[str]) -> dict[str, str]:
    """The last part of each key ('lr'), or the whole key where two keys share a last part."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
