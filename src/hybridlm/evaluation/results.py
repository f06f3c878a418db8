"""DIR/eval.json: benchmark results of a run, one entry per task, merged across invocations.

    {"format": 1, "updated": ISO date, "hybridlm_version": ...,
     "tasks": {"arc_challenge": {"metrics": {"acc": .., "acc_norm": ..}, "stderr": {...}, "count": 1172,
                                  "split": "test", "source": "file:...", "seconds": ..,
                                  "settings": {"checkpoint", "checkpoint_path", "checkpoint_step", "limit",
                                               "num_fewshot", "fewshot_split", "fewshot_source", "max_length",
                                               "batch_size", "device", "data_dir", "date",
                                               "hybridlm_version"}}, ...}}

Evaluating a task again replaces its entry and keeps the others, so `--tasks lambada` after
`--tasks arc_challenge` leaves both in the file (each with its own settings and date).
"""

from __future__ import annotations

import json
from pathlib import Path

from hybridlm.atomic_write import write_json_atomic
from hybridlm.errors import HybridLMError

EVAL_FILE = "eval.json"
FORMAT = 1


def eval_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / EVAL_FILE


def load_eval(run_dir: str | Path) -> dict | None:
    path = eval_path(run_dir)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HybridLMError(f"{path} is not valid JSON ({exc.msg}); delete it and evaluate again") from None


def write_eval(run_dir: str | Path, results: dict) -> Path:
    """Merge `results["tasks"]` into DIR/eval.json (atomic replace); per-document samples stay out."""
    path = eval_path(run_dir)
    existing = load_eval(run_dir) or {}
    tasks = dict(existing.get("tasks") or {})
    for name, entry in results["tasks"].items():
        tasks[name] = {k: v for k, v in entry.items() if k != "samples"}
    merged = {"format": FORMAT, "updated": results.get("date"), "hybridlm_version": results.get("hybridlm_version"),
              "tasks": tasks}
    return write_json_atomic(path, merged)


def read_eval(run_dir: str | Path) -> dict[str, float] | None:
    """Flat metric columns for `hybridlm compare`, e.g. {"arc_challenge/acc_norm": 0.25, ...};
    None when the run has no eval.json."""
    data = load_eval(run_dir)
    if data is None:
        return None
    columns: dict[str, float] = {}
    for task, entry in sorted((data.get("tasks") or {}).items()):
        for metric, value in (entry.get("metrics") or {}).items():
            if isinstance(value, (int, float)):
                columns[f"{task}/{metric}"] = float(value)
    return columns


def format_table(results: dict) -> str:
    """A plain-text table: one row per metric, with its standard error, the count and the data source."""
    header = f"{'task':<14} {'metric':<11} {'value':>12} {'stderr':>12} {'n':>7}  source"
    lines = [header, "-" * len(header)]
    for task, entry in results["tasks"].items():
        shots = entry.get("settings", {}).get("num_fewshot") or 0
        source = entry.get("source", "") + (f" ({shots}-shot)" if shots else "")
        for row, (metric, value) in enumerate(entry["metrics"].items()):
            err = entry.get("stderr", {}).get(metric)
            err_text = f"± {_number(err)}" if err is not None else ""
            first = row == 0
            lines.append(f"{task if first else '':<14} {metric:<11} {_number(value):>12} {err_text:>12} "
                         f"{entry['count'] if first else '':>7}  {source if first else ''}".rstrip())
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 1e5 else f"{value:.4g}"
