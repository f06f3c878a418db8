"""Passkey retrieval prompts: a number hidden at a chosen depth in filler text, asked for at the end.

The classic long-context probe (Mohtashami & Jaggi's passkey task): the filler repeats sentences that
carry no information, so the only way to answer is to retrieve the key from far back. Prompts are built
in token space from the run's own tokenizer, so their length is exact: `length` context tokens = intro +
filler before + needle + filler after + question, and `depth` is the fraction of the filler placed before
the needle (0 = right after the intro, 1 = right before the question). Everything is drawn from
`numpy.random.default_rng(seed)` per (length, depth), so the same settings give the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hybridlm.errors import HybridLMError
from hybridlm.evaluation.encoding import Tokenizer

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
         "Find it and memorize it. I will quiz you about the important information there.\n")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
ANSWER = " {key}"  # the scored continuation (a space, then the digits)

DEFAULT_LENGTHS = (4096, 8192, 16384, 32768, 65536)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class PasskeySettings:
    """What to generate: `samples` prompts per (length, depth), keys of `digits` digits, and
    `alternatives` wrong keys per prompt for the log-likelihood choice (0: no choice scoring)."""


    lengths: tuple[int, ...] = ()  # empty: 4K..64K up to the run's trained length (`lengths_up_to`)
    depths: tuple[float, ...] = DEFAULT_DEPTHS
    samples: int = 5
    digits: int = 5
    alternatives: int = 3
    seed: int = 0

    def validate(self, fixed_tokens: int = 0) -> PasskeySettings:
        if not self.depths:
            raise HybridLMError("passkey needs at least one depth")
        if any(n < 1 for n in self.lengths):
            raise HybridLMError(f"passkey lengths are numbers of tokens, got {list(self.lengths)}")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise HybridLMError(f"passkey depths are fractions of the filler in [0, 1], got {list(self.depths)}")
        if self.samples < 1:
            raise HybridLMError(f"passkey samples must be >= 1, got {self.samples}")
        if not 1 <= self.digits <= 18:
            raise HybridLMError(f"passkey digits must be between 1 and 18, got {self.digits}")
        if self.alternatives < 0 or self.alternatives >= 9 * 10 ** (self.digits - 1):
            raise HybridLMError(f"passkey alternatives must be >= 0 and fewer than the {self.digits}-digit keys")
        short = [n for n in self.lengths if n <= fixed_tokens]
        if short:
            raise HybridLMError(f"passkey length(s) {short} leave no room for filler: intro, needle and question "
                                f"take {fixed_tokens} tokens with this tokenizer; use longer --lengths")
        return self

    def describe(self) -> dict:
        return {"lengths": list(self.lengths), "depths": list(self.depths), "samples": self.samples,
                "digits": self.digits, "alternatives": self.alternatives, "seed": self.seed}


@dataclass(frozen=True)
class PasskeyPrompt:
    length: int  # context tokens (the prompt), exactly
    depth: float
    passkey: str
    prompt: list[int]
    key_position: int  # index in `prompt` of the needle's first token
    alternatives: tuple[str, ...]  # wrong keys of the same number of digits


class PasskeyBuilder:
    """Token pieces of the prompt, encoded once; `prompt()` assembles one prompt of an exact length."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.intro = list(tokenizer.encode(INTRO))
        self.question = list(tokenizer.encode(QUESTION))
        self._filler_unit = list(tokenizer.encode(FILLER))
        if not self._filler_unit:
            raise HybridLMError("the tokenizer encodes the passkey filler text to no tokens")
        self._filler: list[int] = []

    def needle(self, key: str) -> list[int]:
        return list(self.tokenizer.encode(NEEDLE.format(key=key)))

    def answer(self, key: str) -> list[int]:
        return list(self.tokenizer.encode(ANSWER.format(key=key)))

    def fixed_tokens(self, digits: int) -> int:
        """Tokens that are not filler (the needle's length for a key of `digits` digits, e.g. 1..1)."""
        return len(self.intro) + len(self.question) + len(self.needle("7" * digits))

    def filler(self, count: int) -> list[int]:
        """The first `count` tokens of the repeated filler (cut mid-sentence when the budget says so)."""
        while len(self._filler) < count:
            self._filler += self._filler_unit
        return self._filler[:count]

    def prompt(self, length: int, depth: float, key: str, alternatives: Sequence[str] = ()) -> PasskeyPrompt:
        needle = self.needle(key)
        room = length - len(self.intro) - len(needle) - len(self.question)
        if room < 0:
            raise HybridLMError(f"a passkey prompt of {length} tokens has no room for its filler; "
                                f"it needs more than {length - room} tokens")
        before = round(depth * room)
        haystack = self.filler(room)
        tokens = self.intro + haystack[:before] + needle + haystack[before:] + self.question
        return PasskeyPrompt(length, float(depth), key, tokens, len(self.intro) + before, tuple(alternatives))


def random_key(rng: np.random.Generator, digits: int) -> str:
    """A key of exactly `digits` digits (no leading zero)."""
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def passkey_prompts(tokenizer: Tokenizer, settings: PasskeySettings) -> list[PasskeyPrompt]:
    """Every prompt of the grid, ordered by length, then depth, then sample."""
    builder = PasskeyBuilder(tokenizer)
    if not settings.lengths:
        raise HybridLMError("passkey needs at least one prompt length (lengths_up_to gives the default grid)")
    settings.validate(builder.fixed_tokens(settings.digits))
    prompts = []
    for length in settings.lengths:
        for depth_index, depth in enumerate(settings.depths):
            rng = np.random.default_rng([settings.seed, int(length), depth_index])
            for _ in range(settings.samples):
                key = random_key(rng, settings.digits)
                wrong: list[str] = []
                while len(wrong) < settings.alternatives:
                    other = random_key(rng, settings.digits)
                    if other != key and other not in wrong:
                        wrong.append(other)
                prompts.append(builder.prompt(int(length), float(depth), key, wrong))
    return prompts


def lengths_up_to(trained: int) -> tuple[int, ...]:
    """The default grid: 4K, 8K, ... 64K, up to the trained length (at least 4K); longer is extrapolation,
    asked for explicitly with --passkey-lengths."""
    return tuple(n for n in DEFAULT_LENGTHS if n <= max(trained, DEFAULT_LENGTHS[0]))
