"""Sweep reports: one record per member, ranked, as summary.json, summary.md and a markdown table.

`hybridlm compare` builds its table with the same functions, so comparing a sweep directory
reproduces the sweep's own ranking table exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hybridlm.atomic_write import write_json_atomic, write_text_atomic
from hybridlm.reports import format_table, human_count
from hybridlm.runs import RunDir
from hybridlm.sweep.plan import Member, SweepPlan
from hybridlm.sweep.estimate import clock
from hybridlm.sweep.specs import format_lr
from hybridlm.sweep.state import read_json_or_none

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
DEFAULT_SORT = "best_val_loss"
# larger is better for these; everything else (losses, perplexity, time, params) sorts ascending
HIGHER_IS_BETTER = ("tokens_per_s", "final_val_accuracy", "acc", "acc_norm", "exact_match", "f1", "mfu")
TABLE_HEADERS = ["rank", "member", "layout", "attn %", "lr", "params", "best val loss", "final val loss",
                 "val acc", "val ppl", "tokens", "tok/s", "time", "status"]


# ------------------------------------------------------------------------ records
def run_record(run_dir: Path, name: str | None = None) -> dict[str, Any]:
    """Everything the tables and plots need from one run directory (finished or not)."""
    run = RunDir(run_dir)
    results = read_json_or_none(run.results_file)
    record: dict[str, Any] = {"rank": None, "name": name or run.path.name, "group": None, "layout": None,
                              "attention_pct": None, "lr": None, "params": None, "best_val_loss": None,
                              "best_step": None, "final_val_loss": None, "final_val_accuracy": None,
                              "final_val_perplexity": None, "steps": None, "planned_steps": None,
                              "train_time_s": None, "tokens": None, "tokens_per_s": None,
                              "status": "done" if results else "incomplete", "error": None,
                              "eval": read_eval_columns(run.path), "dir": str(run.path)}
    config = (results or {}).get("config") or _config_dict(run)
    if config:
        record["group"] = config.get("run", {}).get("name") or record["name"]
        record["lr"] = config.get("train", {}).get("lr")
        record["planned_steps"] = config.get("train", {}).get("max_steps")
    if results:
        model, r = results.get("model", {}), results.get("results", {})
        record.update(layout=model.get("layout"), params=model.get("params_total"),
                      best_val_loss=r.get("best_val_loss"), best_step=r.get("best_step"),
                      final_val_loss=r.get("final_val_loss"), final_val_accuracy=r.get("final_val_accuracy"),
                      final_val_perplexity=r.get("final_val_perplexity"), steps=r.get("steps"),
                      train_time_s=r.get("train_time_s"), tokens=r.get("tokens_processed"),
                      # the steady rate: the first log interval holds compilation and autotuning
                      tokens_per_s=r.get("tokens_per_s_steady") or r.get("tokens_per_s"))
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
                  error=None if done else member.error)
    for key, value in (("layout", member.layout), ("lr", member.lr), ("params", member.params),
                       ("tokens", member.tokens)):
        if record.get(key) is None:
            record[key] = value
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
    except ImportError:  # pragma: no cover
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


def eval_columns(records: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in records for k in (r.get("eval") or {})})


def ranking_table(records: list[dict[str, Any]]) -> str:
    """The markdown table of summary.md and `hybridlm compare` (records already ranked)."""
    extra = eval_columns(records)
    rows = []
    for r in records:
        rows.append([
            r["rank"] if r["rank"] is not None else "-", r["name"], r["layout"] or "-",
            _num(r["attention_pct"], "{:.0f}"), format_lr(r["lr"]) if r["lr"] else "-",
            human_count(r["params"]) if r["params"] else "-", _num(r["best_val_loss"], "{:.4f}"),
            _num(r["final_val_loss"], "{:.4f}"), _num(r["final_val_accuracy"], "{:.4f}"),
            _num(r["final_val_perplexity"], "{:.2f}"), human_count(r["tokens"]) if r["tokens"] else "-",
            _num(r["tokens_per_s"], "{:,.0f}"), _duration(r["train_time_s"]), r["status"],
            *[_num((r.get("eval") or {}).get(c), "{:.4f}") for c in extra],
        ])
    align = "rllrrrrrrrrrrl" + "r" * len(extra)
    return format_table([*TABLE_HEADERS, *extra], rows, align=align)


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


def best_lr_table(entries: list[dict[str, Any]]) -> str:
    rows = [[e["group"], e["layout"] or "-", _num(e["attention_pct"], "{:.0f}"),
             format_lr(e["best_lr"]) if e["best_lr"] else "-", _num(e["best_val_loss"], "{:.4f}"),
             ", ".join(f"{lr}: {loss:.4f}" for lr, loss in e["losses"].items()) or "-",
             "best lr at the edge of the range: extend it" if e["at_edge"] else ""] for e in entries]
    return format_table(["preset", "layout", "attn %", "best lr", "best val loss", "val loss per lr", "note"],
                        rows, align="llrrrll")


def _num(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return pattern.format(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 600:
        return f"{seconds:.1f}s"
    return clock(int(seconds))


# -------------------------------------------------------------------------- files
def write_summary(plan: SweepPlan, command: list[str] | None = None, plots: bool = True) -> dict[str, Any]:
    """summary.json, summary.md and (with `plots`) the PNG figures in the sweep directory."""
    records = rank_records(sweep_records(plan))
    summary: dict[str, Any] = {
        "format": 1, "kind": plan.kind, "out": str(plan.out), "command": command,
        "settings": plan.settings, "conditions": plan.conditions,
        "best": records[0]["name"] if records and records[0]["rank"] == 1 else None,
        "counts": _counts(records), "members": records,
    }
    if plan.kind == "lr":
        summary["best_lr_per_preset"] = best_lr_per_group(records)
    summary["plots"] = []
    if plots:
        from hybridlm.sweep.plots import write_plots

        summary["plots"] = [p.name for p in write_plots(records, plan.out, kind=plan.kind)]
    write_json_atomic(plan.out / SUMMARY_JSON, summary, indent=1)
    write_text_atomic(plan.out / SUMMARY_MD, summary_markdown(summary, records))
    return summary


def console_report(summary: dict[str, Any]) -> str:
    """What `hybridlm sweep` prints at the end: the ranking, best lrs (LR sweeps) and failures."""
    records = summary["members"]
    parts = [ranking_table(records)]
    if summary.get("best_lr_per_preset"):
        parts.append("best learning rate per preset:\n" + best_lr_table(summary["best_lr_per_preset"]))
    parts += _failure_lines(records)
    return "\n\n".join(p for p in parts if p)


def _failure_lines(records: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in records:
        if r["status"] == "failed":
            lines.append(f"- `{r['name']}`: {r['error']}")
        if r.get("eval_error"):
            lines.append(f"- `{r['name']}` (eval): {r['eval_error']}")
    return ["\n".join(lines)] if lines else []


def summary_markdown(summary: dict[str, Any], records: list[dict[str, Any]]) -> str:
    c = summary.get("conditions") or {}
    counts = summary["counts"]
    lines = [f"# Sweep `{summary['kind']}`: {len(records)} members", ""]
    if summary.get("command"):
        lines += ["```", "hybridlm " + " ".join(_quote(a) for a in summary["command"]), "```", ""]
    if c:
        data = c.get("data") or {}
        budget = c.get("token_budget")
        lines.append(f"Every member: {c.get('steps')} steps x batch {c.get('batch_size')} x grad_accum "
                     f"{c.get('grad_accum')} x seq {c.get('seq_len')} = "
                     f"{f'{budget:,}' if isinstance(budget, int) else budget} tokens; data `{data.get('source')}` "
                     f"(tokenizer `{data.get('tokenizer')}`, data seed {data.get('seed')}); validation on "
                     f"{c.get('eval_batches')} fixed batches; train seed {c.get('seed')}.")
        if c.get("swept"):
            lines.append(f"Varied: {', '.join(c['swept'])}.")
        if c.get("also_differs"):
            lines.append(f"Also different between members: {', '.join(c['also_differs'])}.")
        lines.append("")
    lines.append(f"Status: {counts['done']} done, {counts['failed']} failed, {counts['other']} not finished.")
    lines += ["", "## Ranking (by best validation loss)", "", ranking_table(records), ""]
    if summary.get("best_lr_per_preset"):
        lines += ["## Best learning rate per preset", "", best_lr_table(summary["best_lr_per_preset"]), ""]
    failures = _failure_lines(records)
    if failures:
        lines += ["## Failures", "", *failures, ""]
    if summary.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in summary["plots"]] + [""]
    return "\n".join(lines)


def _counts(records: list[dict[str, Any]]) -> dict[str, int]:
    done = sum(r["status"] == "done" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    return {"done": done, "failed": failed, "other": len(records) - done - failed}


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


