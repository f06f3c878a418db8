"""Per-document scores -> task metrics, with lm-eval's aggregations and standard errors.

Accuracies are means with the sample standard error of the mean (lm-eval's `mean_stderr`:
sample std with n-1, over sqrt(n)). LAMBADA perplexity is exp(-mean log-likelihood) as lm-eval's
`perplexity`; lm-eval bootstraps its standard error, we report the delta-method value
ppl * stderr(log-likelihood), which is deterministic and agrees with the bootstrap to a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values))


def mean_stderr(values: Sequence[float]) -> float | None:
    """Sample standard error of the mean; None below two values (lm-eval prints N/A)."""
    n = len(values)
    if n < 2:
        return None
    mu = mean(values)
    return math.sqrt(sum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def perplexity(loglikelihoods: Sequence[float]) -> float:
    return math.exp(-mean(loglikelihoods))


def perplexity_stderr(loglikelihoods: Sequence[float]) -> float | None:
    spread = mean_stderr(loglikelihoods)
    return None if spread is None else perplexity(loglikelihoods) * spread


def multiple_choice_scores(loglikelihoods: Sequence[float], choices: Sequence[str], gold: int) -> dict:
    """acc (argmax of summed log-likelihoods) and acc_norm (divided by each answer's length in
    characters), first index on ties -- as lm-eval's multiple_choice `process_results`."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    pred = int(np.argmax(lls))
    pred_norm = int(np.argmax(lls / lengths))
    return {"pred": pred, "pred_norm": pred_norm, "acc": float(pred == gold), "acc_norm": float(pred_norm == gold)}


def summarise(per_doc: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Means and their standard errors of every per-document metric."""
    values = {name: mean(xs) for name, xs in per_doc.items()}
    errors = {name: mean_stderr(xs) for name, xs in per_doc.items()}
    return values, errors
