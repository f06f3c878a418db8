"""Settings of the data pipeline: where text comes from, how it is tokenised and split."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlm.config.read_only import ReadOnlyWhenResolved


@dataclass
class DataConfig(ReadOnlyWhenResolved):
    """Where the text comes from and how it becomes token windows.

    `source` forms: ``embedded`` (the shipped corpus, all four books), ``embedded:shakespeare``
    (one or more of shakespeare, kjv_bible, state_of_the_union, moby_dick, joined by ``+``),
    a local ``.txt`` / ``.jsonl`` / ``.parquet`` file, directory or glob, or
    ``hf:NAME[:CONFIG][:SPLIT]`` for a Hugging Face dataset (streamed, capped by `doc_limit`).
    `tokenizer` forms: ``gpt2``, ``bpe:VOCAB`` (trained on the training text), a local
    ``tokenizer.json`` path or a Hugging Face hub tokenizer name.
    `packing`: ``stream`` (windows of the token stream, the seed's behaviour) or ``documents`` (the same
    windows with their document boundaries, which no layer crosses; data/packing.py).
    """

    source: str = "embedded"
    tokenizer: str = "gpt2"
    seq_len: int = 1024
    val_fraction: float = 0.05
    text_field: str = "text"
    doc_limit: int | None = None
    seed: int = 1234
    on_exhausted: str = "repeat"
    cache_dir: str | None = None
    num_workers: int = 0
    packing: str = "stream"
