"""`--dry-run`: the plan as a table (what would run, how big, how long) without training anything.

Times come from the measured throughput of members that already finished in this sweep directory
(scaled by FLOPs per token), else from a rough guess for the device, marked with `~`.
"""

from __future__ import annotations

from typing import Any

from hybridlm.reports import format_table, human_count
from hybridlm.sweep.devices import Slot
from hybridlm.sweep.estimate import TimeEstimator, clock, eta_seconds, flops_per_token
from hybridlm.sweep.records import disk_state, member_results
from hybridlm.sweep.specs import format_lr
from hybridlm.sweep.state import SweepPlan


def describe_plan(plan: SweepPlan, slots: list[Slot]) -> str:
    estimator = TimeEstimator(slots[0].device if slots else "cpu")
    states = {m.name: (disk_state(plan.member_dir(m), m.steps) if m.error is None else None) for m in plan.members}
    flops = {m.name: flops_per_token(m.build_config()) for m in plan.members if m.error is None}
    for m in plan.members:
        state = states[m.name]
        if state is not None and state.action == "done":
            results = member_results(plan.member_dir(m))
            estimator.add(flops[m.name], results.get("tokens_processed") or m.tokens or 0,
                          m.wall_s or results.get("total_time_s"))
    approx = "" if estimator.measured else "~"
    rows, remaining = [], []
    for m in plan.members:
        state = states[m.name]
        if state is None:  # an invalid config, or data that could not be prepared
            rows.append([m.name, m.layout or "-", "-", "-", "-", "-", "-", "-", "-", "-", "-",
                         f"invalid: {m.error}" if not m.valid else f"fails: {m.error}"])
            continue
        seconds = estimator.seconds(flops[m.name], m.tokens or 0)
        action = {"done": "done (skip)", "resume": f"resume from step {state.step}", "fresh": "train"}[state.action]
        if state.action != "done":
            remaining.append(seconds * (1 - state.step / max(m.steps or 1, 1)))
        rows.append([m.name, m.layout, f"{100 * (m.attention_fraction or 0):.0f}", format_lr(m.lr) if m.lr else "-",
                     m.steps, human_count(m.tokens or 0), f"{m.epochs:.2f}" if m.epochs is not None else "-",
                     human_count(m.params) if m.params else "-",
                     f"{approx}{estimator.tokens_per_s(flops[m.name]):,.0f}", f"{approx}{clock(seconds)}",
                     m.lr_source or "-", action])
    table = format_table(["member", "layout", "attn %", "lr", "steps", "tokens", "epochs", "params", "tok/s", "time",
                          "lr from", "action"], rows, align="llrrrrrrrrll")
    lines = [f"sweep {plan.kind}: {len(plan.members)} members -> {plan.out}", _conditions_line(plan.conditions)]
    lines += [f"WARNING: {w}" for w in plan.conditions.get("data_warnings") or []]
    lines += ["", table, ""]
    basis = "measured on finished members" if estimator.measured else "a rough guess for the device"
    lines.append(f"to train: {len(remaining)} members, about {clock(eta_seconds(remaining, len(slots)))} on "
                 f"{len(slots)} slot{'s' if len(slots) != 1 else ''} ({', '.join(s.device for s in slots)}); "
                 f"times are {basis}")
    lines.append("dry run: nothing was trained or written (the data was tokenised into the shared cache to count "
                 "its tokens)")
    return "\n".join(lines)


def _conditions_line(c: dict[str, Any]) -> str:
    if not c:
        return "no valid members"
    budget = c.get("token_budget")
    budget_text = f"{budget:,}" if isinstance(budget, int) else str(budget)
    data = c.get("data") or {}
    processes = f" x {c['nproc']} processes" if (c.get("nproc") or 1) > 1 else ""
    text = (f"every member: {c.get('steps')} steps x batch {c.get('batch_size')} x seq {c.get('seq_len')}{processes} = "
            f"{budget_text} tokens; data {data.get('source')} ({data.get('tokenizer')}), "
            f"{c.get('eval_batches')} validation batches, seed {c.get('seed')}")
    unique, epochs = c.get("unique_tokens"), c.get("epochs")
    if unique is not None:
        text += (f"\ndata: {f'{unique:,}' if isinstance(unique, int) else unique} unique training tokens; each member "
                 f"reads {f'{epochs:.2f}' if isinstance(epochs, (int, float)) else epochs} epochs of them")
    if c.get("swept"):
        text += f"\nvaried: {', '.join(c['swept'])}"
    if c.get("also_differs"):
        text += f"\nalso different: {', '.join(c['also_differs'])}"
    return text

