"""Honest data: the unique training tokens a sweep's data holds, and how many epochs each member reads.

A member's budget (steps x batch x grad_accum x seq_len x processes) larger than the training split
reads the split more than once (the sampler starts a reshuffled epoch): a ranking at three epochs
measures memorisation as much as modelling, so the plan says so before anything trains. With
`data.on_exhausted = "stop"` the same plan is an error: its members would stop at the end of the
first epoch, short of their planned steps.
"""

from __future__ import annotations

from typing import Any

from hybridlm.config import Config
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.sweep.state import Member, SweepPlan


def account_data(plan: SweepPlan, progress: bool = True) -> list[str]:
    """Tokenise each distinct data config once (into the shared cache) and record every member's
    `unique_tokens` and `epochs`; returns the plan's warnings, one line each.

    A member whose data cannot be prepared is marked failed (unless it finished already); a plan
    beyond one epoch with data.on_exhausted = "stop" raises ConfigError."""
    from hybridlm.data import prepare_data
    from hybridlm.data.sampler import window_count

    groups: dict[str, list[tuple[Member, Config]]] = {}
    for member in plan.members:
        if member.valid:
            config = member.build_config()
            groups.setdefault(repr(sorted(config.to_dict()["data"].items())), []).append((member, config))
    warnings: list[str] = []
    for group in groups.values():
        data_config = group[0][1].data
        try:
            unique = len(prepare_data(data_config, progress=progress).train_tokens)
        except HybridLMError as exc:
            for member, _ in group:
                if member.status != "done":
                    member.status, member.error = "failed", f"data: {exc}"
            warnings.append(f"data for {_names([m for m, _ in group])} failed: {exc}")
            continue
        windows = max(window_count(unique, data_config.seq_len), 1)
        for member, config in group:
            t = config.train
            member.unique_tokens = unique
            member.epochs = round(t.max_steps * t.batch_size * t.grad_accum * member.nproc / windows, 4)
        over = [m for m, _ in group if m.epochs > 1]
        if not over:
            continue
        source = f"data.source {data_config.source!r} with tokenizer {data_config.tokenizer!r}"
        epochs = max(m.epochs for m in over)
        if data_config.on_exhausted == "stop":
            raise ConfigError(f"{_names(over)} would read {epochs:.2f} epochs of {source} ({unique:,} training "
                              "tokens), but data.on_exhausted = \"stop\" ends training after one epoch; lower "
                              "--steps or --batch-size, or use a larger corpus (docs/sweeps.md)")
        warnings.append(f"{_names(over)} read up to {epochs:.2f} epochs of {source} ({unique:,} unique training "
                        "tokens): tokens repeat, so the ranking partly measures memorisation; use a larger corpus "
                        "(docs/sweeps.md) or fewer --steps")
    plan.conditions["unique_tokens"] = _shared([m.unique_tokens for m in plan.members if m.unique_tokens])
    plan.conditions["epochs"] = _shared([m.epochs for m in plan.members if m.epochs is not None])
    plan.conditions["data_warnings"] = warnings
    return warnings


def _shared(values: list[Any]) -> Any:
    return values[0] if len(set(values)) == 1 else ("varies" if values else None)


def _names(members: list[Member], shown: int = 3) -> str:
    names = ", ".join(m.name for m in members[:shown])
    return f"{len(members)} members ({names}{', ...' if len(members) > shown else ''})" if len(members) > 1 \
        else f"member {names}"
