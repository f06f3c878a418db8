"""Training curves of one run: train loss, val loss, val accuracy, val perplexity (one PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(metrics: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = pyplot()
    train = [m for m in metrics if m.get("event") == "train"]
    evals = [m for m in metrics if m.get("event") == "eval"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [
        (axes[0, 0], train, "loss", "train loss"),
        (axes[0, 1], evals, "val_loss", "validation loss"),
        (axes[1, 0], evals, "val_accuracy", "validation next-token accuracy"),
        (axes[1, 1], evals, "val_perplexity", "validation perplexity"),
    ]
    for ax, records, key, label in panels:
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "val_perplexity" and points and max(ys) / max(min(ys), 1e-9) > 20:
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
