"""Tokenizers behind one small interface: GPT-2 (shipped, offline), trained BPE, local files, hub names.

Everything is a Hugging Face `tokenizers.Tokenizer` underneath, so saving, loading and fast batch
encoding work the same for every kind; `Tokenizer` only adds what the pipeline needs on top
(the document separator id, a stable fingerprint for cache keys, no implicit BOS/EOS).
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import os
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from hybridlm.errors import DataError

from .bpe import parse_bpe_spec, train_bpe

GPT2_DIR = Path(__file__).parent / "tokenizers" / "gpt2"
EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
METADATA_FILE = "hybridlm_tokenizer.json"


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the pipeline's conventions.

    `encode` never adds special tokens (documents are separated by `eos_id` explicitly), and a
    literal ``<|endoftext|>`` in the text maps to the eos id, as in GPT-2. `decode` keeps special
    tokens, so decode(encode(text)) == text for byte-level tokenizers.
    """

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer, name: str, eos_id: int | None = None) -> None:
        self.hf = hf_tokenizer
        self.name = name
        self.eos_id = _find_eos_id(hf_tokenizer, name) if eos_id is None else int(eos_id)
        self.eos_token = hf_tokenizer.id_to_token(self.eos_id)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        return self.hf.decode(ids, skip_special_tokens=False)

    @functools.cached_property
    def vocab_size(self) -> int:
        """Largest id + 1: the embedding size a model needs, even if the vocabulary has holes."""
        return max(self.hf.get_vocab(with_added_tokens=True).values()) + 1

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary, merges, added tokens and text pre-processing (not of the JSON text,
        whose layout changes between `tokenizers` versions); equal fingerprints encode identically."""
        spec = json.loads(self.hf.to_str())
        model = dict(spec.get("model") or {})
        if isinstance(model.get("merges"), list):
            model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        added = sorted((t["id"], t["content"], bool(t.get("special"))) for t in spec.get("added_tokens") or [])
        canonical = {"model": model, "added_tokens": added, "normalizer": spec.get("normalizer"),
                     "pre_tokenizer": spec.get("pre_tokenizer"), "eos_id": self.eos_id}
        return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode("utf-8")).hexdigest()

    @functools.cached_property
    def splits_at_whitespace(self) -> bool:
        """True for plain GPT-2-style byte-level BPE: any point between a non-space and a space
        character is a token boundary, so long texts may be tokenised in pieces (see `tokenize_parallel`)."""
        spec = json.loads(self.hf.to_str())
        pre = spec.get("pre_tokenizer") or {}
        model = spec.get("model") or {}
        return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
                and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
                and model.get("type") == "BPE" and model.get("dropout") is None)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (HF format) and ``hybridlm_tokenizer.json`` (spec, eos) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(directory / TOKENIZER_FILE))
        meta = {"format": 1, "spec": self.name, "eos_id": self.eos_id, "eos_token": self.eos_token,
                "vocab_size": self.vocab_size, "fingerprint": self.fingerprint}
        (directory / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return directory

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def get_tokenizer(spec: str, train_texts: Iterable[str] | None = None,
                  cache_dir: str | os.PathLike | None = None) -> Tokenizer:
    """Build the tokenizer named by `spec`: ``gpt2``, ``bpe:VOCAB``, a tokenizer.json path (or a
    directory holding one), or a Hugging Face hub name. ``bpe:`` needs `train_texts`; with
    `cache_dir` a trained BPE is stored there and reused for identical texts."""
    spec = (spec or "").strip()
    if not spec:
        raise DataError("data.tokenizer is empty; use gpt2, bpe:VOCAB, a tokenizer.json path or a hub name")
    if spec == "gpt2":
        return _gpt2()
    if spec.startswith("bpe:"):
        vocab_size = parse_bpe_spec(spec)
        if train_texts is None:
            raise DataError(f"tokenizer '{spec}' is trained on the corpus: pass train_texts "
                            "(prepare_data does this for you)")
        hf = train_bpe(vocab_size, train_texts, None if cache_dir is None else Path(cache_dir))
        return Tokenizer(hf, spec)
    path = Path(os.path.expanduser(spec))
    if path.exists() or spec.endswith(".json"):
        return _from_local(path, spec)
    return _from_hub(spec)


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Read back what `Tokenizer.save` wrote (the spec and eos id come from hybridlm_tokenizer.json)."""
    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path} is missing; point at a directory written by Tokenizer.save")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        name, eos_id = meta["spec"], meta["eos_id"]
    except (ValueError, KeyError) as e:
        raise DataError(f"{meta_path} is corrupt ({e}); save the tokenizer again") from None
    return Tokenizer(_read_tokenizer_json(directory / TOKENIZER_FILE), name, eos_id)


@functools.lru_cache(maxsize=1)
def _gpt2() -> Tokenizer:
    """GPT-2's byte-level BPE from the shipped encoder.json / vocab.bpe (built once per process)."""
    try:
        vocab = json.loads(lzma.decompress((GPT2_DIR / "encoder.json.xz").read_bytes()))
        merge_lines = lzma.decompress((GPT2_DIR / "vocab.bpe.xz").read_bytes()).decode("utf-8").split("\n")
    except (OSError, lzma.LZMAError, ValueError) as e:
        raise DataError(f"the GPT-2 tokenizer files in {GPT2_DIR} cannot be read ({e}); reinstall hybridlm") from None
    merges = [tuple(line.split(" ")) for line in merge_lines[1:] if line]  # line 0 is "#version: 0.2"
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOS_TOKEN])  # already id 50256 in the vocabulary; this makes it atomic
    return Tokenizer(hf, "gpt2")


def _from_local(path: Path, spec: str) -> Tokenizer:
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"tokenizer file {file} (data.tokenizer '{spec}') does not exist; pass a tokenizer.json "
                        "path, a directory holding one, gpt2 or bpe:VOCAB")
    eos_id = None
    meta = file.parent / METADATA_FILE
    if meta.is_file():
        try:
            eos_id = json.loads(meta.read_text(encoding="utf-8")).get("eos_id")
        except ValueError:
            eos_id = None
    return Tokenizer(_read_tokenizer_json(file), spec, eos_id)


def _read_tokenizer_json(file: Path) -> tokenizers.Tokenizer:
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for unparsable files
        raise DataError(f"{file} is not a valid Hugging Face tokenizer.json ({_first_line(e)}); "
                        "save it with tokenizers' Tokenizer.save") from None


def _from_hub(name: str) -> Tokenizer:
    try:
        hf = tokenizers.Tokenizer.from_pretrained(name)
    except Exception:
        raise DataError(f"could not load tokenizer '{name}' from the Hugging Face hub (no network?); "
                        "pass a local tokenizer.json path or use gpt2 / bpe:N") from None
    return Tokenizer(hf, name)


def _find_eos_id(hf: tokenizers.Tokenizer, name: str) -> int:
    """``<|endoftext|>``, else ``</s>``, else the first special token: the document separator."""
    for token in (EOS_TOKEN, "</s>"):
        token_id = hf.token_to_id(token)
        if token_id is not None:
            return token_id
    specials = sorted(i for i, t in hf.get_added_tokens_decoder().items() if t.special)
    if specials:
        return specials[0]
    raise DataError(f"tokenizer '{name}' has no {EOS_TOKEN}, </s> or other special token to separate documents; "
                    "add one to its tokenizer.json (tokenizer.add_special_tokens) or use gpt2 / bpe:N")


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__

