"""Benchmarks scored as lm-eval scores them: ARC, HellaSwag, LAMBADA, PIQA and validation perplexity;
and long-context checks: loss against position and passkey retrieval (docs/long-context.md).

    results = evaluate(model, tokenizer, "arc_challenge,hellaswag", data_dir="builtin-subsets")
    columns = read_eval("runs/tiny")        # {"arc_challenge/acc_norm": 0.25, ...} or None

`hybridlm eval --run DIR` is the command-line form; `lm_eval_bridge` exposes the same scorer to
lm-eval (`--model hybridlm`). Torch is imported only when something is scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = {
    "evaluate": ("hybridlm.evaluation.runner", "evaluate"),
    "read_eval": ("hybridlm.evaluation.results", "read_eval"),
    "load_eval": ("hybridlm.evaluation.results", "load_eval"),
    "score_requests": ("hybridlm.evaluation.scoring", "score_requests"),
    "encode_pair": ("hybridlm.evaluation.encoding", "encode_pair"),
}

if TYPE_CHECKING:  # pragma: no cover
    from hybridlm.evaluation.encoding import encode_pair
    from hybridlm.evaluation.results import load_eval, read_eval
    from hybridlm.evaluation.runner import evaluate
    from hybridlm.evaluation.scoring import score_requests


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'hybridlm.evaluation' has no attribute {name!r}")


__all__ = ["evaluate", "read_eval", "load_eval", "score_requests", "encode_pair"]
