"""Figures of the long-context evaluations, drawn from eval.json entries (one or several runs).

    position_loss.png   validation loss against token position (log x), one line per run
    passkey.png         exact-match accuracy per (depth, length), a heatmap per run, and the accuracy
                        against length, one line per run, when several runs are drawn
"""

from __future__ import annotations

from pathlib import Path

from hybridlm.runs.plots import pyplot

POSITION_LOSS_PLOT = "position_loss.png"
PASSKEY_PLOT = "passkey.png"


def plot_position_loss(entries: dict[str, dict], path: Path) -> Path:
    """`entries`: run label -> its position_loss entry. x: each bin's middle position (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, entry in entries.items():
        bins = entry["bins"]
        xs = [max((b["start"] + b["end"] - 1) / 2, 0.5) for b in bins]  # position 0 drawn at 0.5 (log axis)
        ax.plot(xs, [b["loss"] for b in bins], marker="o", markersize=3, linewidth=1.3,
                label=f"{label} (mean {entry['metrics']['loss']:.3f})")
    ax.set_xscale("log")
    where = sorted({e.get("position", "in the window") for e in entries.values()})
    ax.set_xlabel(f"token position {' / '.join(where)}")
    ax.set_ylabel("validation loss (nats)")
    lengths = sorted({e["seq_len"] for e in entries.values()})
    ax.set_title(f"loss against position (windows of {', '.join(map(str, lengths))} tokens)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def plot_passkey(entries: dict[str, dict], path: Path, metric: str = "exact_match") -> Path:
    """A heatmap of `metric` over (depth, length) per run, plus accuracy against length for several runs."""
    plt = pyplot()
    runs = list(entries.items())
    panels = len(runs) + (1 if len(runs) > 1 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 4.2), squeeze=False)
    for ax, (label, entry) in zip(axes[0], runs):
        lengths = sorted({c["length"] for c in entry["cells"]})
        depths = sorted({c["depth"] for c in entry["cells"]})
        value = {(c["length"], c["depth"]): c.get(metric) for c in entry["cells"]}
        grid = [[value.get((n, d)) if value.get((n, d)) is not None else float("nan") for n in lengths]
                for d in depths]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
        ax.set_xticks(range(len(lengths)), [_tokens(n) for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("depth of the key")
        ax.set_title(f"{label}: {metric}", fontsize=9)
    fig.colorbar(image, ax=axes[0, len(runs) - 1], shrink=0.8)
    if len(runs) > 1:
        ax = axes[0, -1]
        for label, entry in runs:
            lengths = sorted({c["length"] for c in entry["cells"]})
            ys = []
            for n in lengths:
                cells = [c for c in entry["cells"] if c["length"] == n and c.get(metric) is not None]
                ys.append(sum(c[metric] * c["count"] for c in cells) / max(sum(c["count"] for c in cells), 1))
            ax.plot(lengths, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} against length")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _tokens(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
