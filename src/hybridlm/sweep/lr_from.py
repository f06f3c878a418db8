"""`sweep arch --lr-from LR_SWEEP_DIR`: each layout's learning rate, taken from a finished LR sweep.

The rule, in order:
1. the LR sweep tuned this very model (same preset / layout label, e.g. `h100_hybrid_sparse`):
   its best lr (the lr whose member reached the lowest best validation loss);
2. else an LR-sweep model with the same layout string (e.g. `GGGGGAGGGGGA`): its best lr;
3. else the LR-sweep model with the nearest attention fraction: its best lr; when two are equally
   near (8 % attention lies halfway between 0 % and 17 %), the geometric mean of their best lrs,
   i.e. the midpoint on the log-lr axis the LR sweep itself is laid out on.
Several matches at one step (two groups with the same layout) also give their geometric mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hybridlm.errors import ConfigError
from hybridlm.sweep.records import best_lr_per_group, sweep_records
from hybridlm.sweep.specs import format_lr
from hybridlm.sweep.state import load_plan, read_sweep

TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class GroupBest:
    group: str
    layout: str | None
    attention_fraction: float
    lr: float
    best_val_loss: float


@dataclass(frozen=True)
class LrChoice:
    lr: float
    source: str        # how it was chosen, for sweep.json and the dry-run table


class LrTable:
    def __init__(self, entries: list[GroupBest], origin: str = "lr sweep"):
        if not entries:
            raise ConfigError(f"{origin} has no finished members to take learning rates from")
        self.entries = entries
        self.origin = origin

    def choose(self, label: str, layout: str, attention_fraction: float) -> LrChoice:
        same_label = [e for e in self.entries if e.group == label]
        if same_label:
            return self._pick(same_label, f"best lr of {label}")
        same_layout = [e for e in self.entries if e.layout == layout]
        if same_layout:
            return self._pick(same_layout, f"best lr of layout {layout} ({', '.join(e.group for e in same_layout)})")
        distance = min(abs(e.attention_fraction - attention_fraction) for e in self.entries)
        nearest = [e for e in self.entries
                   if abs(e.attention_fraction - attention_fraction) - distance <= TIE_TOLERANCE]
        pct = ", ".join(f"{e.group} {100 * e.attention_fraction:.0f}%" for e in nearest)
        return self._pick(nearest, f"nearest attention fraction ({pct})")

    @staticmethod
    def _pick(entries: list[GroupBest], reason: str) -> LrChoice:
        if len(entries) == 1:
            return LrChoice(entries[0].lr, f"{reason}: {format_lr(entries[0].lr)}")
        lr = math.exp(sum(math.log(e.lr) for e in entries) / len(entries))
        lrs = ", ".join(format_lr(e.lr) for e in entries)
        return LrChoice(float(f"{lr:.4g}"), f"{reason}: geometric mean of {lrs}")


def read_lr_table(sweep_dir: Path) -> LrTable:
    """The best lr of each group of a (finished or partly finished) `sweep lr` directory."""
    data = read_sweep(sweep_dir)
    if data is None:
        raise ConfigError(f"--lr-from {sweep_dir}: not a sweep directory (no sweep.json); "
                          "give the --out of a `hybridlm sweep lr`")
    if data.get("kind") != "lr":
        raise ConfigError(f"--lr-from {sweep_dir} is a `sweep {data.get('kind')}`; give a `sweep lr` directory")
    plan = load_plan(sweep_dir)
    entries = []
    for best in best_lr_per_group(sweep_records(plan)):
        if best["best_lr"] is None:
            continue
        entries.append(GroupBest(group=best["group"], layout=best["layout"],
                                 attention_fraction=(best["attention_pct"] or 0.0) / 100.0,
                                 lr=best["best_lr"], best_val_loss=best["best_val_loss"]))
    return LrTable(entries, origin=f"--lr-from {sweep_dir}")
