"""How long members will take: a rough FLOPs guess, replaced by measurements as members finish.

Throughput is modelled as an effective FLOP rate (training FLOPs per token x tokens per second),
which transfers between model sizes far better than tokens/s does. Before anything has finished the
rate is a guess from measured training runs (below); afterwards it
is the median rate of the finished members, wall time including process start and evaluation.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from hybridlm.config import Config

# Measured model-FLOP rates of `hybridlm train` (docs/benchmarks.md): ~2e14 on an H100 (h100_deltanet
# 107.5K and h100_hybrid_sparse 116K tokens/s at 1.8 / 1.7 GFLOP per token), 2.5e10-6e10 on 2 CPU cores
# (tiny 24K tokens/s at 1 MFLOP, cpu_demo 6.3K tokens/s at 9.5 MFLOP per token).
GUESS_FLOPS = {"cuda": 2.0e14, "cpu": 4.0e10}


def flops_per_token(config: Config) -> float:
    from hybridlm.model.accounting import flops_per_token as model_flops

    return model_flops(config.model, config.data.seq_len)


@dataclass
class Measurement:
    flops_per_token: float
    tokens: int
    seconds: float


class TimeEstimator:
    def __init__(self, device_type: str = "cpu"):
        self.device_type = "cuda" if device_type.startswith("cuda") else "cpu"
        self.measurements: list[Measurement] = []

    def add(self, flops_per_token: float, tokens: int, seconds: float | None) -> None:
        if seconds and seconds > 0 and tokens > 0:
            self.measurements.append(Measurement(flops_per_token, tokens, seconds))

    @property
    def measured(self) -> bool:
        return bool(self.measurements)

    def flop_rate(self) -> float:
        if self.measurements:
            return statistics.median(m.flops_per_token * m.tokens / m.seconds for m in self.measurements)
        return GUESS_FLOPS[self.device_type]

    def seconds(self, flops_per_token: float, tokens: int) -> float:
        return flops_per_token * tokens / self.flop_rate()

    def tokens_per_s(self, flops_per_token: float) -> float:
        return self.flop_rate() / flops_per_token


def eta_seconds(remaining: list[float], slots: int) -> float:
    """Wall time to finish `remaining` job durations on `slots` parallel slots (longest first, greedy)."""
    if not remaining:
        return 0.0
    loads = [0.0] * max(1, slots)
    for duration in sorted(remaining, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
