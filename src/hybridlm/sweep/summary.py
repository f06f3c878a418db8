"""Sweep reports: the ranked records as summary.json, summary.md and the console table.

`hybridlm compare` builds its table with the same functions, so comparing a sweep directory
reproduces the sweep's own ranking table exactly. summary.md also says what data the members
read (unique training tokens, epochs) and where each member's time went (training vs overhead).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from hybridlm.atomic_write import write_json_atomic, write_text_atomic
from hybridlm.reports import format_table, human_count
from hybridlm.sweep.estimate import clock
from hybridlm.sweep.plots import write_plots
from hybridlm.sweep.records import best_lr_per_group, rank_records, sweep_records
from hybridlm.sweep.specs import format_lr
from hybridlm.sweep.state import SweepPlan

SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
TABLE_HEADERS = ["rank", "member", "layout", "attn %", "lr", "params", "best val loss", "final val loss",
                 "val acc", "val ppl", "tokens", "tok/s", "time", "status"]


# ------------------------------------------------------------------------ tables
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
    summary["timing"] = timing_totals(records)
    summary["plots"] = []
    if plots:
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
        processes = f" x {c['nproc']} processes" if (c.get("nproc") or 1) > 1 else ""
        lines.append(f"Every member: {c.get('steps')} steps x batch {c.get('batch_size')} x grad_accum "
                     f"{c.get('grad_accum')} x seq {c.get('seq_len')}{processes} = "
                     f"{f'{budget:,}' if isinstance(budget, int) else budget} tokens; data `{data.get('source')}` "
                     f"(tokenizer `{data.get('tokenizer')}`, data seed {data.get('seed')}); validation on "
                     f"{c.get('eval_batches')} fixed batches; train seed {c.get('seed')}.")
        if data_line(c):
            lines.append(data_line(c))
        lines += [f"**Warning:** {w}." for w in c.get("data_warnings") or []]
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
    timing = summary.get("timing")
    if timing:
        lines += ["## Time per member (last training attempt)", "",
                  f"{timing['members']} members: {timing['wall_s']:.1f} s wall, {timing['train_s']:.1f} s of it "
                  f"training and {timing['worker_start_s']:.1f} s waiting for new workers' imports (once per worker); "
                  f"overhead (the rest: data, model build, evaluations, checkpoints, plots) "
                  f"{timing['mean_overhead_s']:.2f} s per member on average, at most {timing['max_overhead_s']:.2f} s.",
                  "", timing_table(records), ""]
    if summary.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in summary["plots"]] + [""]
    return "\n".join(lines)


def _counts(records: list[dict[str, Any]]) -> dict[str, int]:
    done = sum(r["status"] == "done" for r in records)
    failed = sum(r["status"] == "failed" for r in records)
    return {"done": done, "failed": failed, "other": len(records) - done - failed}


def timing_totals(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Sums and the mean per-member overhead of the members' last training attempts (None: no timing yet)."""
    timed = [r["timing"] for r in records if r.get("timing")]
    if not timed:
        return None
    total = {key: round(sum(t.get(key) or 0.0 for t in timed), 3)
             for key in ("wall_s", "worker_start_s", "train_s", "overhead_s")}
    return {**total, "members": len(timed), "mean_overhead_s": round(total["overhead_s"] / len(timed), 3),
            "max_overhead_s": max(t["overhead_s"] for t in timed)}


def timing_table(records: list[dict[str, Any]]) -> str:
    rows = [[r["name"], f"{t['wall_s']:.2f}", _num(t.get("worker_start_s"), "{:.2f}"), f"{t['train_s']:.2f}",
             f"{t['overhead_s']:.2f}", _num(t.get("first_step_s"), "{:.2f}"), t.get("process", "-")]
            for r in records if (t := r.get("timing"))]
    return format_table(["member", "wall s", "waited for worker s", "training s", "overhead s", "first step s",
                         "process"], rows, align="lrrrrrl")


def data_line(c: dict[str, Any]) -> str | None:
    """'Data: 4,812,345 unique training tokens; each member reads 3.05 epochs of them.' (None before accounting)."""
    unique, epochs = c.get("unique_tokens"), c.get("epochs")
    if unique is None:
        return None
    unique_text = f"{unique:,}" if isinstance(unique, int) else str(unique)
    epochs_text = f"{epochs:.2f} epochs" if isinstance(epochs, (int, float)) else f"{epochs} epochs (see the table)"
    return f"Data: {unique_text} unique training tokens; each member reads {epochs_text} of them."


def _quote(arg: str) -> str:
    return shlex.quote(arg)


