"""Score passkey retrieval two ways, per (length, depth) cell of the grid.

- `exact_match` (the headline): greedy decoding (temperature 0, the product's generation path) of a few
  tokens after the question; a hit when the decoded text starts with exactly the key's digits (leading
  spaces skipped, and the digit run must end there: "714321" does not match "71432").
- `choice_acc`: the key's log-likelihood against `alternatives` wrong keys of the same number of digits,
  each scored as the continuation " DIGITS" of the same prompt (the shared scorer, lm-eval's contract);
  a hit when the true key scores strictly highest. Chance is 1 / (alternatives + 1), so a small model
  that cannot yet copy the key exactly still shows whether it attends to it.
- `loglikelihood`: mean log p(" DIGITS" | prompt) of the true key, in nats.
"""

from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from hybridlm.evaluation import metrics
from hybridlm.evaluation.encoding import Tokenizer
from hybridlm.evaluation.passkey import PasskeyBuilder, PasskeyPrompt, PasskeySettings, passkey_prompts
from hybridlm.evaluation.scoring import inference_precision, model_device, score_requests

EXTRA_DECODE_TOKENS = 2  # decoded past the key's own tokens, so a longer digit run is seen (and missed)
_LEADING_DIGITS = re.compile(r"\s*(\d+)")


def key_matches(text: str, key: str) -> bool:
    found = _LEADING_DIGITS.match(text)
    return found is not None and found.group(1) == key


@torch.no_grad()
def score_passkey(model: nn.Module, tokenizer: Tokenizer, settings: PasskeySettings, batch_size: int = 4,
                  precision: str = "auto", progress: bool = False) -> dict:
    """The eval.json entry of the passkey task: overall metrics, then one record per (length, depth)."""
    prompts = passkey_prompts(tokenizer, settings)
    builder = PasskeyBuilder(tokenizer)
    decoded = _greedy_texts(model, prompts, builder, batch_size, precision)
    per_prompt = [{"exact_match": float(key_matches(text, p.passkey))} for p, text in zip(prompts, decoded)]
    _add_likelihoods(model, prompts, builder, per_prompt, batch_size, precision, progress)
    cells: dict[tuple[int, float], list[dict]] = defaultdict(list)
    for p, scores in zip(prompts, per_prompt):
        cells[(p.length, p.depth)].append(scores)
    names = list(per_prompt[0])
    overall, errors = metrics.summarise({n: [s[n] for s in per_prompt] for n in names})
    grid = [{"length": length, "depth": depth, "count": len(rows),
             **{n: metrics.mean([r[n] for r in rows]) for n in names}} for (length, depth), rows in cells.items()]
    by_length = {str(length): metrics.mean([s["exact_match"] for p, s in zip(prompts, per_prompt)
                                            if p.length == length]) for length in settings.lengths}
    return {"metrics": overall, "stderr": errors, "count": len(prompts), "split": "synthetic",
            "source": f"passkey: {settings.digits}-digit keys in repeated filler, seed {settings.seed}",
            "passkey": settings.describe(), "exact_match_by_length": by_length, "cells": grid,
            "scoring": "exact_match: greedy decoding starts with the key's digits; choice_acc: the key's "
                       f"log-likelihood beats {settings.alternatives} wrong keys; loglikelihood: nats of the key"}


def _greedy_texts(model: nn.Module, prompts: list[PasskeyPrompt], builder: PasskeyBuilder, batch_size: int,
                  precision: str) -> list[str]:
    from hybridlm.model.generation import generate_batch
    from hybridlm.model.sampling import Sampling

    new_tokens = max(len(builder.answer(p.passkey)) for p in prompts) + EXTRA_DECODE_TOKENS
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        with inference_precision(device, precision):
            completions = generate_batch(model, [p.prompt for p in prompts], new_tokens, Sampling(temperature=0.0),
                                         batch_size=batch_size)
    finally:
        model.train(was_training)
    return [builder.tokenizer.decode(c.tokens) for c in completions]


def _add_likelihoods(model: nn.Module, prompts: list[PasskeyPrompt], builder: PasskeyBuilder, per_prompt: list[dict],
                     batch_size: int, precision: str, progress: bool) -> None:
    requests, owners = [], []
    for index, p in enumerate(prompts):
        for key in (p.passkey, *p.alternatives):
            requests.append((p.prompt, builder.answer(key)))
            owners.append(index)
    window = max(len(context) + len(answer) for context, answer in requests)
    scores = score_requests(model, requests, batch_size=batch_size, max_length=window, progress=progress,
                            precision=precision)
    lls: dict[int, list[float]] = defaultdict(list)
    for owner, (ll, _) in zip(owners, scores):
        lls[owner].append(ll)
    for index, values in lls.items():
        per_prompt[index]["loglikelihood"] = values[0]
        if len(values) > 1:
            per_prompt[index]["choice_acc"] = float(values[0] > max(values[1:]))
