"""Every bad input reaches the user as a one-line DataError from prepare_data naming the file and the fix."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybridlm.config.data_config import DataConfig
from hybridlm.data import prepare_data
from hybridlm.errors import DataError

EOS = "<|endoftext|>"


def _prepare_error(tmp_path, **fields) -> str:
    cfg = DataConfig(**{"seq_len": 16, "cache_dir": str(tmp_path / "cache"), **fields})
    with pytest.raises(DataError) as err:
        prepare_data(cfg, progress=False)
    message = str(err.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def _write(path, content) -> str:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def test_missing_path(tmp_path):
    message = _prepare_error(tmp_path, source=str(tmp_path / "nowhere.txt"))
    assert "nowhere.txt" in message and "does not exist" in message


def test_glob_matching_nothing(tmp_path):
    message = _prepare_error(tmp_path, source=str(tmp_path / "*.jsonl"))
    assert "*.jsonl" in message and "matched no files" in message


def test_directory_without_text_files(tmp_path):
    (tmp_path / "data").mkdir()
    _write(tmp_path / "data" / "image.png", b"\x89PNG")
    message = _prepare_error(tmp_path, source=str(tmp_path / "data"))
    assert str(tmp_path / "data") in message and ".txt" in message


@pytest.mark.parametrize("content", ["", "  \n\n\t\n", f"\n{EOS}\n"])
def test_empty_file(tmp_path, content):
    source = _write(tmp_path / "empty.txt", content)
    message = _prepare_error(tmp_path, source=source)
    assert source in message and "no documents" in message


def test_empty_file_inside_a_directory_is_named(tmp_path):
    (tmp_path / "d").mkdir()
    _write(tmp_path / "d" / "a.txt", "fine text " * 50)
    _write(tmp_path / "d" / "b.txt", "")
    assert str(tmp_path / "d" / "b.txt") in _prepare_error(tmp_path, source=str(tmp_path / "d"))


def test_binary_file(tmp_path):
    source = _write(tmp_path / "weights.bin", bytes(range(256)) * 4)
    message = _prepare_error(tmp_path, source=source)
    assert source in message and "binary" in message


def test_non_utf8_file(tmp_path):
    source = _write(tmp_path / "latin1.txt", "café au lait\n".encode("latin-1"))
    message = _prepare_error(tmp_path, source=source)
    assert source in message and "not valid UTF-8" in message and "offset 3" in message


def test_jsonl_without_the_text_field_names_the_field_and_keys(tmp_path):
    source = _write(tmp_path / "rows.jsonl", "".join(json.dumps({"body": "x", "id": i}) + "\n" for i in range(3)))
    message = _prepare_error(tmp_path, source=source)
    assert source in message and "no field 'text'" in message and "body, id" in message and "data.text_field" in message


def test_jsonl_with_a_broken_line_names_the_line(tmp_path):
    source = _write(tmp_path / "rows.jsonl", json.dumps({"text": "ok"}) + "\n{broken\n")
    message = _prepare_error(tmp_path, source=source)
    assert f"{source} line 2 is not valid JSON" in message


def test_parquet_without_the_text_column_names_the_columns(tmp_path):
    pq.write_table(pa.table({"content": ["a"], "lang": ["en"]}), tmp_path / "t.parquet")
    message = _prepare_error(tmp_path, source=str(tmp_path / "t.parquet"))
    assert "t.parquet" in message and "no column 'text'" in message and "content, lang" in message


def test_corpus_smaller_than_one_window(tmp_path):
    source = _write(tmp_path / "tiny.txt", f"just a few words\n{EOS}\nand a few more words here")
    message = _prepare_error(tmp_path, source=source, seq_len=1024, val_fraction=0.3)
    assert source in message and "fewer than one window of seq_len+1 = 1025" in message


def test_seq_len_larger_than_the_validation_split(tmp_path):
    source = _write(tmp_path / "corpus.txt", "many words of text\n" * 2000 + f"{EOS}\nshort doc")
    message = _prepare_error(tmp_path, source=source, seq_len=500, val_fraction=0.002)
    assert message.startswith("seq_len 500 is larger than the validation split (")
    assert source in message and "lower data.seq_len or raise data.val_fraction" in message


def test_unknown_embedded_subset(tmp_path):
    message = _prepare_error(tmp_path, source="embedded:shakespeare+hamlet")
    assert "unknown embedded corpus 'hamlet'" in message and "moby_dick" in message


@pytest.mark.parametrize("spec", ["bpe:100", "bpe:lots"])
def test_bad_bpe_vocab_fails_before_reading_the_source(tmp_path, monkeypatch, spec):
    from hybridlm.data import shards

    def forbidden(*args, **kwargs):
        raise AssertionError("the source was read before the tokenizer spec was checked")

    monkeypatch.setattr(shards, "iter_documents", forbidden)
    message = _prepare_error(tmp_path, source="embedded:moby_dick", tokenizer=spec)
    assert f"data.tokenizer '{spec}' has a bad vocabulary size" in message and "bpe:8192" in message


def test_missing_tokenizer_file(tmp_path):
    message = _prepare_error(tmp_path, source="embedded:moby_dick", tokenizer=str(tmp_path / "tok.json"))
    assert str(tmp_path / "tok.json") in message


@pytest.mark.parametrize("field,value,expected", [
    ("val_fraction", 0.0, "data.val_fraction"), ("val_fraction", 1.5, "data.val_fraction"),
    ("seq_len", 0, "data.seq_len"), ("doc_limit", 0, "data.doc_limit"), ("on_exhausted", "loop", "data.on_exhausted"),
    ("num_workers", -1, "data.num_workers"), ("source", "", "data.source is empty"),
    ("source", "hf:", "hf:NAME[:CONFIG][:SPLIT]"),
])
def test_bad_config_values(tmp_path, field, value, expected):
    assert expected in _prepare_error(tmp_path, **{"source": "embedded:moby_dick", field: value})
