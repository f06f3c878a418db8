"""Train a byte-level BPE tokenizer on the corpus itself (``bpe:VOCAB``), with an on-disk cache.

Small vocabularies make tiny models cheap (the embedding and output layers shrink), and training
takes seconds. The cache key is a hash of the vocabulary size, the `tokenizers` version and the
exact training texts, so the same corpus never trains twice and a changed corpus never reuses
a stale vocabulary. Training is deterministic: the same texts give the same merges.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from hybridlm.errors import DataError

BPE_MIN_VOCAB = 257  # 256 byte symbols + <|endoftext|>
BPE_MAX_VOCAB = 1 << 20
_EOS_TOKEN = "<|endoftext|>"
_ALGORITHM = "hybridlm-bytelevel-bpe-v1"


def parse_bpe_spec(spec: str) -> int:
    """The vocabulary size of ``bpe:VOCAB``; a one-line `DataError` for anything else."""
    value = spec[len("bpe:"):].strip().replace("_", "")
    if not value.isdigit() or not BPE_MIN_VOCAB <= int(value) <= BPE_MAX_VOCAB:
        raise DataError(f"data.tokenizer '{spec}' has a bad vocabulary size; use bpe:N with an integer N from "
                        f"{BPE_MIN_VOCAB} (256 bytes + <|endoftext|>) to {BPE_MAX_VOCAB}, e.g. bpe:8192")
    return int(value)


def train_bpe(vocab_size: int, texts: Iterable[str], cache_dir: Path | None) -> tokenizers.Tokenizer:
    """A byte-level BPE with `<|endoftext|>` as id 0, read from `cache_dir` when these texts were seen."""
    if iter(texts) is texts:  # a one-shot iterator: keep the texts, they are read twice (hash, train)
        texts = list(texts)
    if cache_dir is None:
        return _train(vocab_size, texts)
    file = Path(cache_dir) / "tokenizers" / f"bpe-{vocab_size}-{_texts_key(vocab_size, texts)}.json"
    if file.is_file():
        try:
            return tokenizers.Tokenizer.from_file(str(file))
        except Exception:  # a damaged cache entry is rebuilt below
            pass
    hf = _train(vocab_size, texts)
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bpe-", suffix=".json", dir=file.parent)
    os.close(fd)
    try:
        hf.save(tmp)
        os.replace(tmp, file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return hf


def _train(vocab_size: int, texts: Iterable[str]) -> tokenizers.Tokenizer:
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[_EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    count = 0

    def counted() -> Iterator[str]:
        nonlocal count
        for text in texts:
            count += 1
            yield text

    hf.train_from_iterator(counted(), trainer=trainer)
    if count == 0:
        raise DataError(f"tokenizer 'bpe:{vocab_size}' has no training text; check data.source")
    return hf


def _texts_key(vocab_size: int, texts: Iterable[str]) -> str:
    digest = hashlib.sha256(f"{_ALGORITHM}|{tokenizers.__version__}|{vocab_size}".encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()[:20]
