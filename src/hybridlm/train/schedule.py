"""Learning rate as a pure function of the step: warmup, then decay to a floor.

A function of (step, horizon) rather than a stateful scheduler, so resuming needs only the step
and `--extend-steps` recomputes the schedule for the new horizon.
"""

from __future__ import annotations

import math


def lr_at(step: int, peak_lr: float, warmup_steps: int, max_steps: int, schedule: str = "linear",
          min_lr_ratio: float = 0.1) -> float:
    """LR for optimizer step `step` (0-based). Linear warmup from peak/warmup to peak."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return peak_lr
    floor = peak_lr * min_lr_ratio
    decay_steps = max(max_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    if schedule == "cosine":
        return floor + (peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak_lr - (peak_lr - floor) * progress
