"""Sampling with the recurrent cache: one prefill pass, then one token per step.

GDN layers carry a fixed-size state, so each new token costs O(1) in the length so far;
attention layers read their (window-bounded) KV cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from [B, V] logits. temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()  # torch wraps generators: grad stays off inside, on in the caller's code between tokens
def generate_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                    seed: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token ids [B] one step at a time (for streaming to a terminal)."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be [batch, length] with at least one token")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        logits = model(input_ids, cache=cache).logits[:, -1]
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            yield token
            if eos_token_id is not None and bool(finished.all()):
                return
            logits = model(token[:, None], cache=cache).logits[:, -1]
    finally:
        model.train(was_training)
