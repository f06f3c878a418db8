"""Generation entry points: token by token (streaming), many prompts at once, and the plain sampler.

A `HybridLM` goes through its `Decoder` (model/decoder.py: one prefill with the training kernels, then a
fixed-shape step per token over preallocated state, sampled on the device, replayed as a CUDA graph on
CUDA), one per model and device, kept while the model lives so that its captured graphs serve later calls.
Any other model with `new_cache()` and `forward(input_ids, cache=...)` (the evaluation tests' table models)
takes a plain loop of forward calls.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hybridlm.model.decoder import Decoder
from hybridlm.model.sampling import Sampling, sample

_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Completion:
    tokens: list[int]   # the new tokens, without the eos that ended them
    stop: str           # "eos" or "length"


def decoder_for(model) -> Decoder:
    """The model's decoder (made on first use, again after the model moved to another device)."""
    decoder = _DECODERS.get(model)
    if decoder is None or decoder.device != model.lm_head.weight.device:
        decoder = Decoder(model, hold_model=False)  # a strong reference would keep the key alive
        _DECODERS[model] = decoder
    return decoder


def _is_hybridlm(model) -> bool:
    from hybridlm.model.lm import HybridLM

    return isinstance(model, HybridLM)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token from [B, V] logits. temperature 0 means greedy."""
    return sample(logits, Sampling(temperature, top_k, top_p), generator)


@torch.no_grad()  # torch wraps generators: grad stays off inside, on in the caller's code between tokens
def generate_tokens(model, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                    seed: int | None = None, repetition_penalty: float = 1.0) -> Iterator[torch.Tensor]:
    """Yield the next token ids [B] one step at a time (for streaming to a terminal); rows that finished
    repeat eos, and it stops once every row has."""
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError("input_ids must be [batch, length] with at least one token")
    sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
    if max_new_tokens < 1:
        return
    if _is_hybridlm(model):
        yield from decoder_for(model).stream(input_ids, max_new_tokens, sampling, eos_token_id, seed)
        return
    yield from _plain_loop(model, input_ids, max_new_tokens, sampling, eos_token_id, seed)


def _plain_loop(model, input_ids, max_new_tokens, sampling, eos_token_id, seed) -> Iterator[torch.Tensor]:
    generator = None if seed is None else torch.Generator(device=input_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        logits = model(input_ids, cache=cache).logits[:, -1]
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        seen = None
        if sampling.penalised:
            seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, input_ids, True)
        for _ in range(max_new_tokens):
            token = sample(logits, sampling, generator, seen)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            if seen is not None:
                seen.scatter_(1, token[:, None], True)
            yield token
            if eos_token_id is not None and bool(finished.all()):
                return
            logits = model(token[:, None], cache=cache).logits[:, -1]
    finally:
        model.train(was_training)


@torch.no_grad()
def generate_batch(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling = Sampling(),
                   eos_token_id: int | None = None, seed: int | None = None, batch_size: int = 32,
                   decoder: Decoder | None = None) -> list[Completion]:
    """Continue every prompt (lists of token ids, any lengths), `batch_size` at a time: prompts of similar
    length share a batch; each row stops at its own eos. Results come back in the prompts' order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    decoder = decoder or decoder_for(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Completion | None] = [None] * len(prompts)
    for first in range(0, len(order), batch_size):
        chosen = order[first:first + batch_size]
        out = decoder.generate([prompts[i] for i in chosen], max_new_tokens, sampling, eos_token_id,
                               None if seed is None else seed + first)
        for i, row in zip(chosen, out.tolist()):
            if eos_token_id is not None and eos_token_id in row:
                results[i] = Completion(row[:row.index(eos_token_id)], "eos")
            else:
                results[i] = Completion(row, "length")
    return results
