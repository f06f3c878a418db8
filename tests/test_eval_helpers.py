"""Shared pieces of the evaluation tests: a model whose log-likelihoods are known by hand, a
character tokenizer for it, a tiny random HybridLM with the GPT-2 tokenizer, and a run directory
written the way training writes one. (No tests here; the test_eval_*.py modules import this.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

# Next-token probabilities given the previous token (rows), over the vocabulary (columns).
CHARS = ["<eos>", " ", "a", "b", "c"]
P = {
    "<eos>": [0.10, 0.10, 0.40, 0.20, 0.20],
    " ": [0.05, 0.05, 0.50, 0.25, 0.15],
    "a": [0.10, 0.60, 0.10, 0.10, 0.10],
    "b": [0.04, 0.10, 0.03, 0.80, 0.03],
    "c": [0.10, 0.50, 0.20, 0.10, 0.10],
}


def p(prev: str, nxt: str) -> float:
    return P[prev][CHARS.index(nxt)]


def logp(*transitions: tuple[str, str]) -> float:
    """Sum of log P(next | prev) over (prev, next) pairs: the hand computation."""
    return sum(math.log(p(a, b)) for a, b in transitions)


class CharTokenizer:
    """One token per character of CHARS (id 0 is end-of-text); any other character reads as "c",
    so real prompts ("Question: ...\nAnswer:") end in "c" and their answers stay hand-computable."""

    eos_id = 0
    vocab_size = len(CHARS)
    name = "chars"

    def encode(self, text: str) -> list[int]:
        return [CHARS.index(c) if c in CHARS else CHARS.index("c") for c in text]

    def decode(self, ids) -> str:
        return "".join(CHARS[int(i)] for i in ids)


@dataclass
class Output:
    logits: torch.Tensor


class OneHot(nn.Module):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(input_ids, len(CHARS)).float()


class TableLM(nn.Module):
    """logits[t] = log P[input[t]]: a bigram model, so every log-likelihood is a sum of table logs.

    With `with_head` it exposes `model` (one-hot "hidden states") and `lm_head` like HybridLM, so the
    scorer takes its head-only path; without, only `forward(...).logits`."""

    def __init__(self, with_head: bool = True):
        super().__init__()
        table = torch.log(torch.tensor([P[c] for c in CHARS], dtype=torch.float32))
        self.register_buffer("table", table)
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device
        if with_head:
            self.model = OneHot()
            self.lm_head = nn.Linear(len(CHARS), len(CHARS), bias=False)
            with torch.no_grad():
                self.lm_head.weight.copy_(table.t())

    def forward(self, input_ids: torch.Tensor, cache=None) -> Output:
        return Output(logits=self.table[input_ids])

    def new_cache(self) -> None:
        """A bigram model needs no state: the last token is always passed in (generate_tokens)."""
        return None


def tiny_hybrid(vocab_size: int, seed: int = 0, layout: str = "GA"):
    from hybridlm.config import ModelConfig
    from hybridlm.model import HybridLM

    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=16,
                         intermediate_size=64, layout=layout, kernels="torch", attention={"num_heads": 4})
    return HybridLM(config).eval()


def gpt2():
    from hybridlm.data import get_tokenizer

    return get_tokenizer("gpt2")


def write_run_dir(path: Path, model, tokenizer, seq_len: int = 32) -> Path:
    """A run directory as training leaves it: config.toml, tokenizer/, checkpoints/best.

    Its data source is a small local text file, so val_ppl rebuilds the split in a moment."""
    from hybridlm.config import Config, DataConfig
    from hybridlm.runs.checkpoint import save_checkpoint

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog number {i * 7}."
                                  for i in range(400)))
    config = Config(model=model.config, data=DataConfig(source=str(corpus), tokenizer="gpt2", seq_len=seq_len,
                                                        val_fraction=0.1))
    config.save(path / "config.toml")
    tokenizer.save(path / "tokenizer")
    save_checkpoint(path / "checkpoints" / "best", model, None, {"step": 0})
    return path
