"""`hybridlm compare`: the sweep table and plots for any set of run directories.

A sweep directory expands to its members (labelled as the sweep labels them, so comparing a sweep
reproduces its summary table); a plain directory of runs expands to the runs inside it; a run
directory is itself. Eval columns appear for runs with an eval.json.

Before ranking, the runs' configs (each run's config.toml) go through the sweep's equal-conditions
check (`conditions.describe_conditions`). What differs (token budget, data, tokenizer, seq_len,
steps, batch, eval batches, seeds, precision), and any config that cannot be read, is printed as a
warning block above the table and written into comparison.md and the CSV. Keys a sweep varies
count as varied only when every directory argument is a sweep that varies them, so comparing one
sweep's members gives its own table and no warning.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hybridlm.config import Config
from hybridlm.errors import HybridLMError
from hybridlm.runs import RunDir, load_run_config
from hybridlm.sweep.conditions import ConditionReport, describe_conditions, format_condition_value
from hybridlm.sweep.plots import write_plots
from hybridlm.sweep.records import metric_value, rank_records, run_record, sweep_records
from hybridlm.sweep.state import is_sweep_dir, load_plan
from hybridlm.sweep.summary import eval_columns, ranking_table

CSV_COLUMNS = ["rank", "name", "group", "layout", "attention_pct", "lr", "params", "best_val_loss", "best_step",
               "final_val_loss", "final_val_accuracy", "final_val_perplexity", "steps", "train_time_s", "tokens",
               "tokens_per_s", "unique_tokens", "epochs", "status", "error", "dir", "unequal_conditions"]
WARNING_UNEQUAL = ("WARNING: these runs were not trained under equal conditions, "
                   "so the ranking compares unlike runs:")
WARNING_UNCHECKED = "WARNING: could not check that these runs were trained under equal conditions:"


@dataclass
class _Found:
    """A record, how to get its config (None: nothing to check) and which argument brought it."""

    record: dict[str, Any]
    config: Callable[[], Config | None]
    source: int


@dataclass
class ConditionsCheck:
    """The equal-conditions check of a comparison: the report on readable configs, unreadable ones."""

    report: ConditionReport
    unreadable: list[tuple[str, str]]          # (run label, why its config could not be read)
    labels: dict[str, str]                     # record dir -> the label the warning uses

    @property
    def equal(self) -> bool:
        return self.report.equal and not self.unreadable

    def lines(self) -> list[str]:
        """The warning block, one line each; empty when the runs are comparable."""
        if self.equal:
            return []
        lines = [WARNING_UNEQUAL if self.report.unequal else WARNING_UNCHECKED]
        lines += [f"- {d.describe()}" for d in self.report.unequal]
        lines += [f"- cannot read the config of {label}: {why}; its conditions are unchecked"
                  for label, why in self.unreadable]
        return lines

    def text(self) -> str:
        return "\n".join(self.lines())

    def markdown(self) -> str:
        return "\n".join(f"> {line}" if line else ">" for line in self.lines())

    def cell(self, record: dict[str, Any]) -> str:
        """The run's own values of the differing conditions (CSV column unequal_conditions)."""
        label = self.labels.get(record["dir"])
        unreadable = dict(self.unreadable)
        if label in unreadable:
            return f"config unreadable: {unreadable[label]}"
        parts = []
        for diff in self.report.unequal:
            for value, names in diff.values:
                if label in names:
                    parts.append(f"{diff.key}={format_condition_value(diff.key, value)}")
        return "; ".join(parts)


def collect(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Records of every run named by `paths` (sweeps and folders expanded), each run once."""
    return [f.record for f in _collect(paths)[0]]


def _collect(paths: list[str | Path]) -> tuple[list[_Found], list[set[str]]]:
    """Each run once, with its config loader; and per argument, the keys its sweep varies."""
    found: list[_Found] = []
    swept: list[set[str]] = []
    seen: set[Path] = set()

    def add(new: list[_Found]) -> None:
        for item in new:
            key = Path(item.record["dir"]).resolve()
            if key not in seen:
                seen.add(key)
                found.append(item)

    for index, raw in enumerate(paths):
        path = Path(raw)
        if not path.exists():
            raise HybridLMError(f"{path} does not exist; pass run or sweep directories")
        if is_sweep_dir(path):
            plan = load_plan(path)
            swept.append(set(plan.conditions.get("swept") or []) | {k for m in plan.members for k in m.swept})
            add([_Found(r, _member_config(plan, m), index) for r, m in zip(sweep_records(plan), plan.members)])
        elif RunDir(path).is_run():
            swept.append(set())
            add([_Found(run_record(path), _run_config(path), index)])
        else:
            runs = sorted(p for p in path.iterdir() if p.is_dir() and RunDir(p).is_run())
            if not runs:
                raise HybridLMError(f"{path} is neither a run directory (no config.toml), a sweep (no sweep.json) "
                                    "nor a folder of runs")
            swept.append(set())
            add([_Found(run_record(p), _run_config(p), index) for p in runs])
    return found, swept


def _run_config(path: Path) -> Callable[[], Config]:
    return lambda: load_run_config(RunDir(path))


def _member_config(plan, member) -> Callable[[], Config | None]:
    """A member's config.toml once it has a run directory; before that, the config the plan builds."""
    run_dir = plan.member_dir(member)

    def load() -> Config | None:
        if RunDir(run_dir).is_run():
            return load_run_config(RunDir(run_dir))
        try:
            return member.build_config()
        except HybridLMError:  # an invalid member: the table lists it as failed, the sweep never checked it
            return None

    return load


def _check_conditions(found: list[_Found], swept: list[set[str]]) -> ConditionsCheck:
    """The sweep's equal-conditions check on the found runs (in the order given: the table's)."""
    used = {f.source for f in found}
    varied = set.intersection(*(swept[i] for i in sorted(used))) if used else set()
    labels = _labels([f.record for f in found])
    configs: dict[str, Config] = {}
    unreadable: list[tuple[str, str]] = []
    for item in found:
        label = labels[item.record["dir"]]
        try:
            config = item.config()
        except Exception as exc:  # noqa: BLE001 - a broken config is reported in the warning, never a traceback
            unreadable.append((label, _one_line(exc)))
            continue
        if config is not None:
            configs[label] = config
    return ConditionsCheck(describe_conditions(configs, varied), unreadable, labels)


def _labels(records: list[dict[str, Any]]) -> dict[str, str]:
    """record dir -> its name, or parent/name (then the full dir) where two records share a name."""
    def pick(fn: Callable[[dict[str, Any]], str]) -> dict[str, str] | None:
        out = {r["dir"]: fn(r) for r in records}
        return out if len(set(out.values())) == len(out) else None

    return (pick(lambda r: r["name"]) or pick(lambda r: f"{Path(r['dir']).parent.name}/{r['name']}")
            or {r["dir"]: r["dir"] for r in records})


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def check_sort_key(records: list[dict[str, Any]], key: str) -> None:
    known = set(CSV_COLUMNS) | set(eval_columns(records))
    if key not in known:
        raise HybridLMError(f"cannot sort by {key!r}; use one of {', '.join(sorted(known - {'error', 'dir'}))}")


def compare(paths: list[str | Path], sort: str = "best_val_loss", metric: str | None = None,
            csv_file: str | Path | None = None, out: str | Path | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The ranked markdown table (and optionally CSV / plots) of the runs; returns (text, records).

    `text` is the table, preceded by the equal-conditions warning block (and a blank line) when the
    runs were not trained under equal conditions; with equal conditions it is the table alone.
    """
    found, swept = _collect(paths)
    records = [f.record for f in found]
    check_sort_key(records, sort)
    metric = metric or sort
    if metric not in ("best_val_loss",):
        check_sort_key(records, metric)
        if not any(isinstance(metric_value(r, metric), (int, float)) for r in records):
            raise HybridLMError(f"no run has a value for {metric!r}")
    records = rank_records(records, sort)
    order = {id(r): i for i, r in enumerate(records)}
    conditions = _check_conditions(sorted(found, key=lambda f: order[id(f.record)]), swept)
    for r in records:
        r["unequal_conditions"] = conditions.cell(r) or None
    table = ranking_table(records)
    text = f"{conditions.text()}\n\n{table}" if not conditions.equal else table
    if csv_file is not None:
        write_csv(records, Path(csv_file))
    if out is not None:
        out = Path(out)
        files = write_plots(records, out, kind="compare", metric=metric)
        warning = f"{conditions.markdown()}\n\n" if not conditions.equal else ""
        (out / "comparison.md").write_text(
            f"# Comparison of {len(records)} runs (sorted by {sort})\n\n{warning}{table}\n\n"
            + "\n".join(f"![{p.name}]({p.name})" for p in files) + "\n")
    return text, records


def write_csv(records: list[dict[str, Any]], path: Path) -> Path:
    extra = eval_columns(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS + extra)
        for r in records:
            evals = r.get("eval") or {}
            writer.writerow([_cell(r.get(c)) for c in CSV_COLUMNS] + [_cell(evals.get(c)) for c in extra])
    return path


def _cell(value: Any) -> Any:
    return "" if value is None else value
