"""Choosing the next token on the device: repetition penalty, temperature, top-k, top-p, then a draw.

Every operation keeps its shape whatever the logits hold (no `nonzero`, no host reads), so the sampler runs
inside a captured CUDA graph. The draw is the exponential race: `argmax(p / E)` with E ~ Exp(1) i.i.d. picks
token i with probability p_i (the Gumbel-max trick in another form), from one noise tensor filled by
`exponential_` with the caller's generator, which a CUDA graph can register and advance on every replay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy (argmax); top_k / top_p None or out of range keep every token;
    repetition_penalty 1 is off (CTRL's rule: a logit of a token already in the row is divided by it when
    positive, multiplied when negative)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 or None: off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0


def penalise_repetitions(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """logits [B, V] with those of tokens seen [B, V] (bool) in the row pushed down by `penalty`."""
    pushed = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pushed, logits)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """-inf outside the top_k largest, then outside the smallest set whose probability reaches top_p
    (the token that crosses top_p stays, so at least one always does)."""
    vocab = logits.shape[-1]
    if top_k is not None and 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None,
           seen: torch.Tensor | None = None) -> torch.Tensor:
    """The next token ids [B] (long) from logits [B, V]; `seen` [B, V] marks the tokens each row holds
    (needed for the repetition penalty)."""
    logits = logits.float()
    if sampling.penalised:
        if seen is None:
            raise ValueError("a repetition penalty needs the tokens seen so far")
        logits = penalise_repetitions(logits, seen, sampling.repetition_penalty)
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = logits.softmax(dim=-1)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    # a draw of exactly 0 would turn p / E into inf (or NaN where p = 0)
    return (probs / noise.clamp_min_(torch.finfo(noise.dtype).tiny)).argmax(dim=-1)
