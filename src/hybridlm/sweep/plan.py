"""The plan of a sweep: its members, each a preset plus `--set` overrides, and what they share.

A member's recipe is `--preset P [--config F] --set o1 --set o2 ...` (kept in sweep.json for people
to read); `configs` writes its resolved config to DIR/configs/NAME.toml, which it trains from:

    hybridlm train --config DIR/configs/NAME.toml --out DIR/NAME

Override order: the user's `--set` first, then what the sweep decides (layout, steps, batch size,
lr, checkpoint interval, run name), so the sweep's values win and conflicts are refused up front.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridlm.config import Config, parse_assignment, resolve
from hybridlm.config.model_config import apply_gdn_aliases
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.sweep.conditions import check_equal_conditions, token_budget
from hybridlm.sweep.lr_from import read_lr_table
from hybridlm.sweep.specs import (ModelSpec, base_label, format_lr, format_value, parse_model_specs,
                                  parse_number_list, toml_literal, unique_names)
from hybridlm.sweep.state import INVALID_CONFIG, Member, SweepPlan

KINDS = ("lr", "arch", "grid")


@dataclass
class BaseOptions:
    """What every sweep kind shares: the base config and the budget applied to all members."""

    out: Path
    preset: str | None = None
    config_file: str | None = None
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None
    batch_size: int | None = None
    nproc: int = 1                     # processes (GPUs) per member; the global batch is nproc x batch_size

    def base_config(self) -> Config:
        return resolve(preset=self.preset, file=self.config_file, overrides=self.overrides)

    def budget_overrides(self) -> list[str]:
        if self.nproc < 1:
            raise ConfigError(f"--gpus-per-member must be at least 1, got {self.nproc}")
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
                "steps": self.steps, "batch_size": self.batch_size, "gpus_per_member": self.nproc}


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
    table = read_lr_table(Path(lr_from)) if lr_from is not None else None
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
                    group=spec.label, swept=swept, nproc=options.nproc)
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
    member.tokens = token_budget(config) * member.nproc


def _finish(kind: str, options: BaseOptions, members: list[Member], settings: dict[str, Any],
            swept_keys: set[str]) -> SweepPlan:
    configs = {m.name: m.build_config() for m in members if m.error is None}
    conditions = check_equal_conditions(configs, swept_keys)
    if options.nproc > 1 and isinstance(conditions.get("token_budget"), int):
        conditions["token_budget"] *= options.nproc  # every process reads its own batch
    conditions["nproc"] = options.nproc
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
