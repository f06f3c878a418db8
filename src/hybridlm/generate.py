"""Text generation from a run, streamed to the terminal as tokens arrive."""

from __future__ import annotations

import sys

import torch

from hybridlm.train.precision import resolve_device


def stream_text(run: str, prompt: str, checkpoint: str = "best", max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                seed: int | None = None, device: str = "auto", out=None) -> str:
    """Print `prompt` and its continuation piece by piece; return the continuation."""
    from hybridlm.model.generation import generate_tokens
    from hybridlm.runs import load_run

    out = out or sys.stdout
    dev = resolve_device(device)
    model, tokenizer = load_run(run, checkpoint=checkpoint, device=dev)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    input_ids = torch.tensor([ids], device=dev)
    out.write(prompt)
    out.flush()
    produced: list[int] = []
    shown = ""
    for token in generate_tokens(model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, eos_token_id=tokenizer.eos_id, seed=seed):
        token_id = int(token[0])
        if token_id == tokenizer.eos_id:
            break
        produced.append(token_id)
        text = tokenizer.decode(produced)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write(tokenizer.decode(produced)[len(shown):] + "\n")
    out.flush()
    return tokenizer.decode(produced)
