"""Sweep figures (PNG, matplotlib Agg): curves overlaid, loss vs attention or lr, loss vs throughput.

    val_loss_curves.png      validation loss against step, every member on one axis
    loss_vs_attention.png    best val loss (or --metric) against attention %  (arch / grid / compare)
    loss_vs_lr.png           best val loss against lr, one line per preset, log x  (lr sweeps)
    loss_vs_throughput.png   the metric against tokens/s, the Pareto front (no member both faster
                             and better) drawn and labelled
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hybridlm.runs import RunDir
from hybridlm.runs.plots import pyplot
from hybridlm.sweep.records import higher_is_better, metric_value

CURVES = "val_loss_curves.png"
VS_ATTENTION = "loss_vs_attention.png"
VS_LR = "loss_vs_lr.png"
VS_THROUGHPUT = "loss_vs_throughput.png"


def write_plots(records: list[dict[str, Any]], out: Path, kind: str = "compare",
                metric: str = "best_val_loss") -> list[Path]:
    """The figures that fit the records (at least the curves); returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_val_curves(records, out / CURVES)]
    scored = [r for r in records if isinstance(metric_value(r, metric), (int, float))]
    if kind == "lr" or _has_lr_series(scored):
        written.append(plot_metric_vs_lr(scored, out / VS_LR, metric))
    if kind != "lr":
        written.append(plot_metric_vs_attention(scored, out / VS_ATTENTION, metric))
    written.append(plot_pareto(scored, out / VS_THROUGHPUT, metric))
    return written


def plot_val_curves(records: list[dict[str, Any]], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 6))
    # matplotlib's default cycle has 10 colours: a 13-layout sweep would reuse them, so larger sweeps
    # take tab20's 20 (its ten dark hues first, then their light partners) and change the line style
    # every 20 members
    tab20 = plt.get_cmap("tab20").colors
    colors = plt.get_cmap("tab10").colors if len(records) <= 10 else tab20[0::2] + tab20[1::2]
    for i, r in enumerate(records):
        evals = [e for e in RunDir(r["dir"]).read_metrics() if e.get("event") == "eval" and "val_loss" in e]
        if evals:
            ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], marker="o", markersize=2.5,
                    linewidth=1.2, label=r["name"], color=colors[i % len(colors)],
                    linestyle=("-", "--", ":")[i // len(colors) % 3])
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss")
    ax.set_title("validation loss of every member")
    ax.grid(alpha=0.3)
    _legend(ax, len(records))
    return _save(fig, plt, path)


def plot_metric_vs_attention(records: list[dict[str, Any]], path: Path, metric: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    points = sorted((r["attention_pct"], metric_value(r, metric), r) for r in records
                    if r.get("attention_pct") is not None)
    # one line, unless a layout ran at several lrs (a grid): then one line per lr
    repeated = len({x for x, _, _ in points}) < len(points)
    groups: dict[float | None, list] = {}
    for x, y, r in points:
        groups.setdefault(r.get("lr") if repeated else None, []).append((x, y, r["name"]))
    for lr, series in groups.items():
        xs, ys, names = zip(*series)
        label = f"lr {lr:g}" if lr is not None and len(groups) > 1 else None
        ax.plot(xs, ys, marker="o", linewidth=1, label=label)
        for x, y, name in series:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("attention layers (%)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} vs attention fraction")
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_metric_vs_lr(records: list[dict[str, Any]], path: Path, metric: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    groups: dict[str, list] = {}
    for r in records:
        if r.get("lr"):
            groups.setdefault(r.get("group") or r["name"], []).append((r["lr"], metric_value(r, metric)))
    best = min if not higher_is_better(metric) else max
    for group, series in groups.items():
        series.sort()
        xs, ys = zip(*series)
        (line,) = ax.plot(xs, ys, marker="o", label=group)
        bx, by = best(series, key=lambda p: p[1])
        ax.scatter([bx], [by], s=90, facecolors="none", edgecolors=line.get_color(), linewidths=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} vs learning rate (circled: best per preset)")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, len(groups))
    return _save(fig, plt, path)


def pareto_front(records: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Members no other member beats on both throughput and the metric, fastest first."""
    sign = -1.0 if higher_is_better(metric) else 1.0
    usable = [r for r in records if r.get("tokens_per_s")]
    front = []
    for r in usable:
        loss, speed = sign * metric_value(r, metric), r["tokens_per_s"]
        dominated = any(sign * metric_value(o, metric) <= loss and o["tokens_per_s"] >= speed and
                        (sign * metric_value(o, metric) < loss or o["tokens_per_s"] > speed) for o in usable)
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: -r["tokens_per_s"])


def plot_pareto(records: list[dict[str, Any]], path: Path, metric: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    usable = [r for r in records if r.get("tokens_per_s")]
    if usable:
        ax.scatter([r["tokens_per_s"] for r in usable], [metric_value(r, metric) for r in usable], color="0.55",
                   s=25, label="members")
        front = pareto_front(usable, metric)
        ax.plot([r["tokens_per_s"] for r in front], [metric_value(r, metric) for r in front], color="C3",
                marker="o", linewidth=1.5, label="Pareto front")
        for r in usable:
            ax.annotate(r["name"], (r["tokens_per_s"], metric_value(r, metric)), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="C3" if r in front else "0.3")
        ax.legend(fontsize=8)
    ax.set_xlabel("throughput (tokens/s)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} vs throughput")
    ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def _has_lr_series(records: list[dict[str, Any]]) -> bool:
    by_group: dict[Any, set] = {}
    for r in records:
        by_group.setdefault((r.get("group"), r.get("layout")), set()).add(r.get("lr"))
    return any(len(lrs) > 1 for lrs in by_group.values())


def _legend(ax, entries: int) -> None:
    if entries and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7 if entries > 8 else 8, ncol=2 if entries > 12 else 1)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
