"""A conversation: one row whose decoding state lives on between turns (`hybridlm generate --interactive`).

Each turn feeds only the new text (and the token sampled last, not yet seen by the model) on top of the
state left by the previous turns, so a turn costs its own tokens, not the conversation so far. The cache
has no fixed length: a ring of the window with a sliding window, otherwise a buffer that doubles when full
(and the decode step's CUDA graph is captured again, on the live state, saved and restored around it).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from hybridlm.model.decoder import Decoder
from hybridlm.model.sampling import Sampling


class Conversation:
    def __init__(self, decoder: Decoder, sampling: Sampling = Sampling(), eos_token_id: int | None = None,
                 seed: int | None = None, max_new_tokens: int = 200):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.decoder, self.max_new_tokens = decoder, max_new_tokens
        self.slot = decoder.new_slot(1, None, sampling, eos_token_id, decoder.dtype(), out_tokens=max_new_tokens)
        if self.slot.generator is not None:
            if seed is None:
                self.slot.generator.seed()
            else:
                self.slot.generator.manual_seed(seed)
        self.pending: list[int] = []  # sampled last turn, not yet fed to the model

    @property
    def length(self) -> int:
        """Tokens the model has read so far."""
        return self.slot.cache.length

    @torch.no_grad()
    def reply(self, ids: list[int], max_new_tokens: int | None = None) -> Iterator[int]:
        """Feed `ids` after everything so far, then yield the reply's tokens one at a time (the caller may
        stop early); an eos ends the reply and is not yielded."""
        limit = min(max_new_tokens or self.max_new_tokens, self.max_new_tokens)
        tokens = self.pending + list(ids)
        if not tokens:
            raise ValueError("a turn needs at least one token")
        self.pending = []
        slot, eos = self.slot, self.slot.eos_token_id
        model = self.decoder.model
        was_training = model.training
        model.eval()
        try:
            self.decoder.feed(slot, tokens)
            for produced in range(1, limit + 1):
                token = int(slot.token[0])
                self.pending = [token]
                if token == eos:
                    return
                yield token
                if produced < limit:
                    self.decoder.step(slot)
        finally:
            model.train(was_training)
