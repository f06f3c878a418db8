"""prepare_data: token shards, the document split, the cache, dtype choice, BPE and parallel workers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from hybridlm.config.data_config import DataConfig
from hybridlm.data import bpe as bpe_module
from hybridlm.data import get_tokenizer, iter_documents, prepare_data, token_dtype
from hybridlm.data import shards as shards_module
from hybridlm.data import tokenize_parallel

EOS = "<|endoftext|>"


def _decode_documents(data, tokens) -> list[str]:
    """The documents of one split: decode the ids and cut at eos (every document ends with one)."""
    assert int(tokens[-1]) == data.tokenizer.eos_id
    return data.tokenizer.decode(tokens).split(EOS)[:-1]


@pytest.fixture(scope="module")
def speeches(tmp_path_factory):
    """30 speeches (whole documents of 8 to 60 kB), tokenised with GPT-2 into a private cache."""
    cache = tmp_path_factory.mktemp("speeches_cache")
    cfg = DataConfig(source="embedded:state_of_the_union", doc_limit=30, seq_len=128, val_fraction=0.1,
                     cache_dir=str(cache), num_workers=1)
    return cfg, prepare_data(cfg, progress=False)


@pytest.fixture(scope="module")
def moby(tmp_path_factory):
    """One long document: the split must cut it, and the tokenizer must run over it in pieces."""
    cache = tmp_path_factory.mktemp("moby_cache")
    cfg = DataConfig(source="embedded:moby_dick", seq_len=256, cache_dir=str(cache), num_workers=1)
    return cfg, prepare_data(cfg, progress=False)


def test_manifest_describes_the_shards(speeches):
    cfg, data = speeches
    m = data.manifest
    assert (m["source"], m["tokenizer"], m["vocab_size"], m["eos_id"], m["dtype"]) == (
        "embedded:state_of_the_union", "gpt2", 50257, 50256, "uint16")
    assert m["tokenizer_fingerprint"] == get_tokenizer("gpt2").fingerprint
    assert (m["val_fraction"], m["split_seed"], m["documents"]) == (0.1, cfg.seed, 30)
    assert m["train_tokens"] == len(data.train_tokens) and m["val_tokens"] == len(data.val_tokens)
    assert m["train_documents"] + m["val_documents"] == 30
    assert m["train_bytes"] + m["val_bytes"] == m["bytes"]
    assert data.train_tokens.dtype == np.uint16 and isinstance(data.train_tokens, np.memmap)
    assert {"hybridlm_version", "created"} <= m.keys()
    assert sorted(p.name for p in data.cache_path.iterdir()) == [
        "hybridlm_tokenizer.json", "manifest.json", "tokenizer.json", "train.bin", "val.bin"]


def test_splits_hold_whole_documents_without_overlap(speeches):
    cfg, data = speeches
    docs = list(iter_documents(cfg.source, doc_limit=cfg.doc_limit))
    split = data.manifest["split"]
    val_ids = split["val_doc_ids"]
    assert split["cut"] is None and len(val_ids) >= 1
    assert _decode_documents(data, data.val_tokens) == [docs[i] for i in val_ids]
    assert _decode_documents(data, data.train_tokens) == [d for i, d in enumerate(docs) if i not in val_ids]
    assert 0.05 <= split["val_byte_fraction"] <= 0.1  # whole documents, filled up to val_fraction of the bytes


def test_shard_ids_equal_the_tokenizer_on_each_document(speeches):
    cfg, data = speeches
    docs = list(iter_documents(cfg.source, doc_limit=cfg.doc_limit))
    val_ids = set(data.manifest["split"]["val_doc_ids"])
    expected = []
    for i, ids in enumerate(data.tokenizer.encode_batch(docs)):
        if i not in val_ids:
            expected.extend(ids + [data.tokenizer.eos_id])
    assert np.array_equal(np.asarray(data.train_tokens), np.array(expected, dtype=np.uint16))


def test_a_single_document_is_cut_at_a_line_and_tokenised_exactly(moby):
    cfg, data = moby
    (novel,) = iter_documents(cfg.source)
    cut = data.manifest["split"]["cut"]
    offset = cut["byte_offset"]
    head, tail = novel.encode()[:offset].decode(), novel.encode()[offset:].decode()
    assert cut["doc"] == 0 and head.endswith("\n") and head + tail == novel
    assert abs(len(tail.encode()) / len(novel.encode()) - cfg.val_fraction) < 0.005
    # the novel is longer than one work batch, so it was tokenised in pieces: ids must still be exact
    eos = data.tokenizer.eos_id
    assert np.array_equal(data.train_tokens, data.tokenizer.encode(head) + [eos])
    assert np.array_equal(data.val_tokens, data.tokenizer.encode(tail) + [eos])


def test_second_call_is_a_cache_hit_without_reading_or_tokenising(speeches, monkeypatch, capsys):
    cfg, first = speeches

    def forbidden(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(shards_module, "tokenize_pieces", forbidden)
    monkeypatch.setattr(shards_module, "iter_documents", forbidden)
    again = prepare_data(cfg, progress=True)
    assert again.cache_path == first.cache_path
    assert np.array_equal(again.train_tokens, first.train_tokens)
    assert "cache hit" in capsys.readouterr().err
    prepare_data(cfg, progress=False)
    assert capsys.readouterr().err == ""


def test_cache_key_follows_settings_and_file_contents(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(f"one two three four five six\n\n{EOS}\n\nseven eight nine ten", encoding="utf-8")
    base = DataConfig(source=str(corpus), seq_len=2, val_fraction=0.3, cache_dir=str(tmp_path / "cache"))
    first = prepare_data(base, progress=False).cache_path
    other_split = prepare_data(DataConfig(**{**base.__dict__, "seed": 7}), progress=False).cache_path
    assert other_split != first
    corpus.write_text(f"one two three four five six\n\n{EOS}\n\nseven eight nine ten eleven", encoding="utf-8")
    os.utime(corpus, ns=(1, 1))  # a different mtime and size: edited files must not reuse old tokens
    edited = prepare_data(base, progress=False)
    assert edited.cache_path != first and "eleven" in edited.tokenizer.decode(
        np.concatenate([edited.train_tokens, edited.val_tokens]))


def test_interrupted_build_leaves_no_cache_behind(tmp_path, monkeypatch):
    cfg = DataConfig(source="embedded:kjv_bible", doc_limit=3, seq_len=16, cache_dir=str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards_module, "tokenize_pieces", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(cfg, progress=False)
    assert [p.name for p in (tmp_path / "shards").iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.undo()
    data = prepare_data(cfg, progress=False)
    assert data.manifest["documents"] == 3
    # a build killed with SIGKILL leaves its temporary directory; the next build of that key removes it
    shutil.rmtree(data.cache_path)
    stale = data.cache_path.parent / f".tmp-{data.cache_path.name}-12345-deadbeef"
    stale.mkdir()
    assert prepare_data(cfg, progress=False).manifest["documents"] == 3 and not stale.exists()


def test_default_cache_dir_comes_from_hybridlm_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDLM_CACHE", str(tmp_path / "env_cache"))
    data = prepare_data(DataConfig(source="embedded:kjv_bible", doc_limit=2, seq_len=16), progress=False)
    assert Path(data.cache_path).parent == tmp_path / "env_cache" / "shards"


def test_dtype_is_uint16_up_to_65536_ids_then_uint32(tmp_path):
    assert token_dtype(50257) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32
    words = ["<unk>"] + [f"w{i}" for i in range(1, 70_000)] + ["</s>"]
    hf = tokenizers.Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf.add_special_tokens(["</s>"])
    hf.save(str(tmp_path / "big.json"))
    corpus = tmp_path / "words.txt"
    corpus.write_text(f"w69999 w1 w2\n{EOS}\nw3 w65536 w4 w5 w6", encoding="utf-8")
    data = prepare_data(DataConfig(source=str(corpus), tokenizer=str(tmp_path / "big.json"), seq_len=2,
                                   val_fraction=0.4, cache_dir=str(tmp_path / "cache")), progress=False)
    assert data.manifest["dtype"] == "uint32" and data.train_tokens.dtype == np.uint32
    assert data.tokenizer.eos_id == 70_000
    all_ids = sorted(np.concatenate([data.train_tokens, data.val_tokens]).tolist())
    assert all_ids == sorted([69999, 1, 2, 70_000, 3, 65536, 4, 5, 6, 70_000])


def test_bpe_is_trained_on_the_training_split_only_and_cached(speeches, tmp_path, monkeypatch):
    cfg = DataConfig(**{**speeches[0].__dict__, "tokenizer": "bpe:300", "cache_dir": str(tmp_path)})
    data = prepare_data(cfg, progress=False)
    assert data.manifest["vocab_size"] == 300 and data.tokenizer.name == "bpe:300" and data.tokenizer.eos_id == 0
    docs = list(iter_documents(cfg.source, doc_limit=cfg.doc_limit))
    val_ids = data.manifest["split"]["val_doc_ids"]
    assert val_ids == speeches[1].manifest["split"]["val_doc_ids"]  # the split does not depend on the tokenizer
    train_docs = [d for i, d in enumerate(docs) if i not in val_ids]
    assert data.tokenizer.fingerprint == get_tokenizer("bpe:300", train_texts=train_docs).fingerprint
    assert _decode_documents(data, data.train_tokens) == train_docs

    def forbidden(*args, **kwargs):
        raise AssertionError("BPE trained twice")

    monkeypatch.setattr(bpe_module, "_train", forbidden)
    again = prepare_data(cfg, progress=False)
    assert again.tokenizer.fingerprint == data.tokenizer.fingerprint


def test_parallel_workers_give_the_same_tokens(moby, tmp_path, monkeypatch):
    cfg, serial = moby
    monkeypatch.setattr(tokenize_parallel, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(tokenize_parallel, "_MAX_BATCH_BYTES", 100_000)
    parallel = prepare_data(DataConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path), "num_workers": 2}),
                            progress=False)
    assert np.array_equal(parallel.train_tokens, serial.train_tokens)
    assert np.array_equal(parallel.val_tokens, serial.val_tokens)
