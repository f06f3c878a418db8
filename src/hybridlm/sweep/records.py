"""A read-only view of run directories: one record per run or member, where each stands, and rankings.

Everything above reads runs through here: the runner asks `disk_state` what a member still needs
(done / resume / fresh, decided from the directory, never from a recorded status a killed sweep
may have left behind), `lr_from` ranks an LR sweep's members, and the reports (`summary`, `compare`,
`plots`) build their tables from the same records, so comparing a sweep reproduces its own table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybridlm.errors import HybridLMError
from hybridlm.runs import RunDir
from hybridlm.sweep.specs import format_lr
from hybridlm.sweep.state import Member, SweepPlan

DEFAULT_SORT = "best_val_loss"
# larger is better for these; everything else (losses, perplexity, time, params) sorts ascending
HIGHER_IS_BETTER = ("tokens_per_s", "final_val_accuracy", "acc", "acc_norm", "exact_match", "f1", "mfu")


def read_json_or_none(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a run still being written)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


@dataclass(frozen=True)
class DiskState:
    """Where a member's run directory stands: done, resumable from a step, or not started."""

    action: str                 # "done" | "resume" | "fresh"
    step: int = 0
    train_time_s: float = 0.0   # training time already spent (of the checkpoint a resume starts from)


def disk_state(run_dir: Path, planned_steps: int | None) -> DiskState:
    run = RunDir(run_dir)
    results = read_json_or_none(run.results_file)
    if results is not None:
        r = results.get("results", {})
        if r.get("steps") == planned_steps or (r.get("stopped_early") and r.get("steps")):
            return DiskState("done", int(r.get("steps") or 0), float(r.get("train_time_s") or 0.0))
    if run.is_run():
        checkpoint = run.latest_resumable(on_skip=lambda *_: None, verify=False)  # train verifies on resume
        if checkpoint is not None:
            from hybridlm.runs.checkpoint import read_trainer_state

            try:
                state = read_trainer_state(checkpoint)
                step, spent = int(state.get("step", 0)), float(state.get("train_time_s") or 0.0)
            except (HybridLMError, ValueError, TypeError):
                step, spent = -1, 0.0
            if step >= 0:
                return DiskState("resume", step, spent)
    return DiskState("fresh")


def member_results(run_dir: Path) -> dict[str, Any]:
    """The "results" block of a member's results.json ({} before it has finished)."""
    return (RunDir(run_dir).read_results() or {}).get("results", {})


# ------------------------------------------------------------------------ records
def run_record(run_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Everything the tables and plots need from one run directory (finished or not)."""
    run = RunDir(run_dir)
    results = read_json_or_none(run.results_file)
    record: dict[str, Any] = {"rank": None, "name": name or run.path.name, "group": None, "layout": None,
                              "attention_pct": None, "lr": None, "params": None, "best_val_loss": None,
                              "best_step": None, "final_val_loss": None, "final_val_accuracy": None,
                              "final_val_perplexity": None, "steps": None, "planned_steps": None,
                              "train_time_s": None, "tokens": None, "tokens_per_s": None, "unique_tokens": None,
                              "epochs": None, "status": "done" if results else "incomplete", "error": None,
                              "eval": read_eval_columns(run.path), "dir": str(run.path)}
    config = (results or {}).get("config") or _config_dict(run)
    if config:
        record["group"] = config.get("run", {}).get("name") or record["name"]
        record["lr"] = config.get("train", {}).get("lr")
        record["planned_steps"] = config.get("train", {}).get("max_steps")
    if results:
        model, r, data = results.get("model", {}), results.get("results", {}), results.get("data") or {}
        record.update(layout=model.get("layout"), params=model.get("params_total"),
                      best_val_loss=r.get("best_val_loss"), best_step=r.get("best_step"),
                      final_val_loss=r.get("final_val_loss"), final_val_accuracy=r.get("final_val_accuracy"),
                      final_val_perplexity=r.get("final_val_perplexity"), steps=r.get("steps"),
                      train_time_s=r.get("train_time_s"), tokens=r.get("tokens_processed"),
                      # the steady rate: the first log interval holds compilation and autotuning
                      tokens_per_s=r.get("tokens_per_s_steady") or r.get("tokens_per_s"),
                      unique_tokens=data.get("train_tokens"), epochs=data.get("epochs"))
        if model.get("attention_fraction") is not None:
            record["attention_pct"] = 100.0 * model["attention_fraction"]
    else:
        _fill_from_metrics(record, run)
    return record


def member_record(plan: SweepPlan, member: Member) -> dict[str, Any]:
    """A run record labelled with the plan's view of the member (name, group, status, error)."""
    record = run_record(plan.member_dir(member), name=member.name)
    done = record["status"] == "done" and record["steps"] == member.steps
    record.update(group=member.group, planned_steps=member.steps, lr_source=member.lr_source,
                  swept=member.swept, eval_status=member.eval_status, eval_error=member.eval_error,
                  status="done" if done else ("planned" if member.status == "done" else member.status),
                  error=None if done else member.error, timing=member.timing)
    for key in ("layout", "lr", "params", "tokens", "unique_tokens", "epochs"):
        if record.get(key) is None:
            record[key] = getattr(member, key)
    if record["attention_pct"] is None and member.attention_fraction is not None:
        record["attention_pct"] = 100.0 * member.attention_fraction
    return record


def sweep_records(plan: SweepPlan) -> list[dict[str, Any]]:
    return [member_record(plan, m) for m in plan.members]


def read_eval_columns(run_dir: Path) -> dict[str, float] | None:
    """Benchmark columns from DIR/eval.json, if the evaluation package can read them."""
    try:
        from hybridlm.evaluation import read_eval
    except ImportError:
        return None
    try:
        return read_eval(run_dir) or None
    except Exception:  # a damaged eval.json must not break a comparison of losses
        return None


def _fill_from_metrics(record: dict[str, Any], run: RunDir) -> None:
    """A run without results.json (still training, or interrupted): its evals so far."""
    evals = [e for e in run.read_metrics() if e.get("event") == "eval" and e.get("val_loss") is not None]
    if evals:
        best = min(evals, key=lambda e: e["val_loss"])
        last = evals[-1]
        record.update(best_val_loss=best["val_loss"], best_step=best["step"], final_val_loss=last["val_loss"],
                      final_val_accuracy=last.get("val_accuracy"), final_val_perplexity=last.get("val_perplexity"),
                      steps=last["step"], tokens=last.get("tokens"))


def _config_dict(run: RunDir) -> dict[str, Any] | None:
    if not run.config_file.is_file():
        return None
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(run.config_file.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------ ranking
def metric_value(record: dict[str, Any], key: str) -> Any:
    if key in record:
        return record[key]
    return (record.get("eval") or {}).get(key)


def higher_is_better(key: str) -> bool:
    last = key.rsplit("/", 1)[-1].split(",")[0]
    return key in HIGHER_IS_BETTER or last in HIGHER_IS_BETTER


def rank_records(records: list[dict[str, Any]], key: str = DEFAULT_SORT) -> list[dict[str, Any]]:
    """Finished records with a value, best first (rank 1, 2, ...), then the rest in their given order."""
    def usable(r):
        value = metric_value(r, key)
        return r["status"] == "done" and isinstance(value, (int, float)) and not math.isnan(value)

    ranked = [r for r in records if usable(r)]
    sign = -1.0 if higher_is_better(key) else 1.0
    ranked.sort(key=lambda r: (sign * metric_value(r, key), r["name"]))
    for i, r in enumerate(ranked, 1):
        r["rank"] = i
    rest = [r for r in records if not usable(r)]
    for r in rest:
        r["rank"] = None
    return ranked + rest


def best_lr_per_group(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each group (preset / layout) of an LR sweep: the lr with the lowest best val loss."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get("group") or r["name"], []).append(r)
    out = []
    for group, members in groups.items():
        done = [r for r in members if r["status"] == "done" and r["best_val_loss"] is not None and r["lr"]]
        lrs = sorted(r["lr"] for r in members if r["lr"])
        entry = {"group": group, "layout": members[0]["layout"], "attention_pct": members[0]["attention_pct"],
                 "best_lr": None, "best_val_loss": None, "at_edge": None,
                 "losses": {format_lr(r["lr"]): r["best_val_loss"] for r in sorted(done, key=lambda r: r["lr"])}}
        if done:
            best = min(done, key=lambda r: (r["best_val_loss"], r["lr"]))
            entry.update(best_lr=best["lr"], best_val_loss=best["best_val_loss"],
                         at_edge=len(lrs) > 1 and best["lr"] in (lrs[0], lrs[-1]))
        out.append(entry)
    return out
