"""Turn a (context, continuation) text pair into token ids exactly as lm-eval's HFLM does.

Scores are only comparable with published numbers when the tokens are the same, so this follows
lm-eval 0.4's `TemplateLM.loglikelihood` / `_encode_pair` for a causal model without a BOS token:
trailing spaces of the context move to the front of the continuation, the pair is encoded whole
and split after the context's own encoding (so merges across the boundary behave as lm-eval's),
and an empty context becomes the end-of-text token.
"""

from __future__ import annotations

from typing import Protocol


class Tokenizer(Protocol):
    """What scoring needs from a tokenizer (hybridlm's tokenizers have this shape)."""

    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) for scoring `continuation` after `context`."""
    if context == "":
        continuation_ids = list(tokenizer.encode(continuation))
        if not continuation_ids:
            raise ValueError("cannot score an empty continuation")
        eos = tokenizer.eos_id
        if continuation_ids[0] != eos:
            return [eos], continuation_ids
        return continuation_ids[:1], continuation_ids[1:]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.encode(context + continuation))
    context_ids = list(tokenizer.encode(context))
    continuation_ids = whole[len(context_ids):]
    if not context_ids:  # a context of only spaces: lm-eval asserts here; condition on end-of-text instead
        context_ids = [tokenizer.eos_id]
    return context_ids, continuation_ids
