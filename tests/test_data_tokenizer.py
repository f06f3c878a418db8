"""Tokenizers: GPT-2 ids, eos handling, round trips, trained BPE, save/load, local and hub specs."""

from __future__ import annotations

import json
import lzma

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from hybridlm.data import get_tokenizer, load_tokenizer
from hybridlm.data import bpe as bpe_module
from hybridlm.data.sources import CORPUS_DIR, EMBEDDED_SOURCES
from hybridlm.errors import DataError

REFERENCE_TEXT = "Hello world! The quick brown fox."
REFERENCE_IDS = [15496, 995, 0, 383, 2068, 7586, 21831, 13]  # GPT-2 (tiktoken / OpenAI encoder)


def _corpus_sample(chars_per_source: int = 20_000) -> list[str]:
    samples = []
    for name in EMBEDDED_SOURCES:
        with lzma.open(CORPUS_DIR / f"{name}.txt.xz", "rt", encoding="utf-8") as f:
            samples.append(f.read(chars_per_source))
    return samples


def test_gpt2_ids_equal_gpt2_reference():
    tok = get_tokenizer("gpt2")
    assert tok.encode(REFERENCE_TEXT) == REFERENCE_IDS
    assert (tok.name, tok.vocab_size, tok.eos_id, tok.eos_token) == ("gpt2", 50257, 50256, "<|endoftext|>")
    assert tok.encode("\n") == [198] and tok.encode("\n\n") == [628]


def test_gpt2_eos_is_one_token_and_never_added_implicitly():
    tok = get_tokenizer("gpt2")
    assert tok.encode("<|endoftext|>") == [50256]
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tok.encode("Hello") == [15496]  # no BOS/EOS appended by encode
    assert tok.decode([15496, 50256, 995]) == "Hello<|endoftext|> world"


def test_gpt2_is_built_once_per_process():
    assert get_tokenizer("gpt2") is get_tokenizer("gpt2")


def test_gpt2_round_trips_the_embedded_corpus_and_batch_equals_single():
    tok = get_tokenizer("gpt2")
    samples = _corpus_sample() + ["naïve café — ünïcödé ✓ 日本語 🙂\ttabs  and   spaces\r\n"]
    batch = tok.encode_batch(samples)
    for text, ids in zip(samples, batch):
        assert ids == tok.encode(text)
        assert tok.decode(ids) == text


def test_save_and_load_round_trip(tmp_path):
    tok = get_tokenizer("gpt2")
    tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    meta = json.loads((tmp_path / "tok" / "hybridlm_tokenizer.json").read_text())
    assert meta["spec"] == "gpt2" and meta["eos_id"] == 50256
    loaded = load_tokenizer(tmp_path / "tok")
    assert (loaded.name, loaded.eos_id, loaded.vocab_size) == ("gpt2", 50256, 50257)
    assert loaded.fingerprint == tok.fingerprint
    sample = _corpus_sample(3000)
    assert loaded.encode_batch(sample) == tok.encode_batch(sample)
    # the directory and the file also work as local tokenizer specs
    for spec in (str(tmp_path / "tok"), str(tmp_path / "tok" / "tokenizer.json")):
        local = get_tokenizer(spec)
        assert local.name == spec and local.eos_id == 50256 and local.encode(REFERENCE_TEXT) == REFERENCE_IDS


def test_bpe_training_is_deterministic_and_round_trips():
    texts = _corpus_sample(30_000)
    first = get_tokenizer("bpe:400", train_texts=texts)
    second = get_tokenizer("bpe:400", train_texts=iter(texts))  # a one-shot iterator works too
    assert first.fingerprint == second.fingerprint
    assert first.vocab_size == 400 and first.eos_id == 0 and first.eos_token == "<|endoftext|>"
    assert first.encode_batch(texts) == second.encode_batch(texts)
    for text in texts:
        assert first.decode(first.encode(text)) == text
    assert get_tokenizer("bpe:500", train_texts=texts).fingerprint != first.fingerprint


def test_bpe_is_cached_on_disk_by_training_text(tmp_path, monkeypatch):
    texts = _corpus_sample(10_000)
    trained = get_tokenizer("bpe:300", train_texts=texts, cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("bpe-300-*.json"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("BPE was trained again although it is cached")

    monkeypatch.setattr(bpe_module, "_train", no_training)
    cached = get_tokenizer("bpe:300", train_texts=texts, cache_dir=tmp_path)
    assert cached.fingerprint == trained.fingerprint
    with pytest.raises(AssertionError):  # other text, other key: it must train
        get_tokenizer("bpe:300", train_texts=texts[:2], cache_dir=tmp_path)


@pytest.mark.parametrize("spec", ["bpe:abc", "bpe:12", "bpe:", "bpe:-5", "bpe:99999999"])
def test_bad_bpe_vocab_is_a_data_error(spec):
    with pytest.raises(DataError, match=f"data.tokenizer '{spec}'"):
        get_tokenizer(spec, train_texts=["some text"])


def test_bpe_without_training_text_is_a_data_error():
    with pytest.raises(DataError, match="train_texts"):
        get_tokenizer("bpe:300")


def _word_level_tokenizer(words: list[str], specials: list[str]) -> tokenizers.Tokenizer:
    vocab = {w: i for i, w in enumerate(words)}
    hf = tokenizers.Tokenizer(models.WordLevel(vocab=vocab, unk_token=words[0]))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if specials:
        hf.add_special_tokens(specials)
    return hf


def test_local_tokenizer_json_eos_falls_back_to_s_then_first_special(tmp_path):
    _word_level_tokenizer(["<unk>", "hello", "world", "</s>"], ["</s>"]).save(str(tmp_path / "a.json"))
    tok = get_tokenizer(str(tmp_path / "a.json"))
    assert tok.eos_id == 3 and tok.encode("hello world") == [1, 2]
    _word_level_tokenizer(["<unk>", "hello", "[SEP]", "[CLS]"], ["[SEP]", "[CLS]"]).save(str(tmp_path / "b.json"))
    assert get_tokenizer(str(tmp_path / "b.json")).eos_id == 2
    _word_level_tokenizer(["<unk>", "hello"], []).save(str(tmp_path / "c.json"))
    with pytest.raises(DataError, match="no <\\|endoftext\\|>, </s> or other special token"):
        get_tokenizer(str(tmp_path / "c.json"))


def test_missing_or_corrupt_tokenizer_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.json"):
        get_tokenizer(str(tmp_path / "missing.json"))
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        get_tokenizer(str(bad))


def test_hub_failure_is_a_one_line_data_error(monkeypatch):
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying for ~20 s
    with pytest.raises(DataError) as err:
        get_tokenizer("nonexistent-org/nonexistent-tokenizer")
    message = str(err.value)
    assert message == ("could not load tokenizer 'nonexistent-org/nonexistent-tokenizer' from the Hugging Face "
                       "hub (no network?); pass a local tokenizer.json path or use gpt2 / bpe:N")
