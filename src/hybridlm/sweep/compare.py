"""`hybridlm compare`: the sweep table and plots for any set of run directories.

A sweep directory expands to its members (labelled as the sweep labels them, so comparing a sweep
reproduces its summary table); a plain directory of runs expands to the runs inside it; a run
directory is itself. Eval columns appear for runs with an eval.json.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hybridlm.errors import HybridLMError
from hybridlm.runs import RunDir
from hybridlm.sweep.summary import (eval_columns, metric_value, rank_records, ranking_table, run_record,
                                    sweep_records)

CSV_COLUMNS = ["rank", "name", "group", "layout", "attention_pct", "lr", "params", "best_val_loss", "best_step",
               "final_val_loss", "final_val_accuracy", "final_val_perplexity", "steps", "train_time_s", "tokens",
               "tokens_per_s", "status", "error", "dir"]


def collect(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Records of every run named by `paths` (sweeps and folders expanded), each run once."""
    from hybridlm.sweep.state import is_sweep_dir, load_plan

    records: list[dict[str, Any]] = []
    seen: set[Path] = set()

    def add(new: list[dict[str, Any]]) -> None:
        for record in new:
            key = Path(record["dir"]).resolve()
            if key not in seen:
                seen.add(key)
                records.append(record)

    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise HybridLMError(f"{path} does not exist; pass run or sweep directories")
        if is_sweep_dir(path):
            add(sweep_records(load_plan(path)))
        elif RunDir(path).is_run():
            add([run_record(path)])
        else:
            runs = sorted(p for p in path.iterdir() if p.is_dir() and RunDir(p).is_run())
            if not runs:
                raise HybridLMError(f"{path} is neither a run directory (no config.toml), a sweep (no sweep.json) "
                                    "nor a folder of runs")
            add([run_record(p) for p in runs])
    return records


def check_sort_key(records: list[dict[str, Any]], key: str) -> None:
    known = set(CSV_COLUMNS) | set(eval_columns(records))
    if key not in known:
        raise HybridLMError(f"cannot sort by {key!r}; use one of {', '.join(sorted(known - {'error', 'dir'}))}")


def compare(paths: list[str | Path], sort: str = "best_val_loss", metric: str | None = None,
            csv_file: str | Path | None = None, out: str | Path | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The ranked markdown table (and optionally CSV / plots) of the runs; returns (table, records)."""
    records = collect(paths)
    check_sort_key(records, sort)
    metric = metric or sort
    if metric not in ("best_val_loss",):
        check_sort_key(records, metric)
        if not any(isinstance(metric_value(r, metric), (int, float)) for r in records):
            raise HybridLMError(f"no run has a value for {metric!r}")
    records = rank_records(records, sort)
    table = ranking_table(records)
    if csv_file is not None:
        write_csv(records, Path(csv_file))
    if out is not None:
        from hybridlm.sweep.plots import write_plots

        out = Path(out)
        files = write_plots(records, out, kind="compare", metric=metric)
        (out / "comparison.md").write_text(
            f"# Comparison of {len(records)} runs (sorted by {sort})\n\n{table}\n\n"
            + "\n".join(f"![{p.name}]({p.name})" for p in files) + "\n")
    return table, records


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
