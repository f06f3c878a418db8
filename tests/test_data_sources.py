"""Document sources: embedded corpus, .txt / .jsonl / .parquet files, directories, globs, hf: datasets."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybridlm.config.data_config import DataConfig
from hybridlm.data import EMBEDDED_SOURCES, iter_documents, prepare_data
from hybridlm.data.sources import CORPUS_DIR
from hybridlm.errors import DataError


def _write_jsonl(path, records, compress=False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_embedded_corpus_matches_its_provenance():
    """The shipped files decompress to exactly the texts whose sha256 PROVENANCE.md records."""
    provenance = (CORPUS_DIR / "PROVENANCE.md").read_text(encoding="utf-8")
    assert EMBEDDED_SOURCES == ("shakespeare", "kjv_bible", "state_of_the_union", "moby_dick")
    for name in EMBEDDED_SOURCES:
        row = re.search(rf"\| `{name}\.txt\.xz` \| (\d+) \| .*? \| `([0-9a-f]{{64}})` \|", provenance)
        assert row, f"{name} missing from PROVENANCE.md"
        raw = lzma.decompress((CORPUS_DIR / f"{name}.txt.xz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == row.group(2)
        assert raw.decode("utf-8").count("\n\n<|endoftext|>\n\n") + 1 == int(row.group(1))


def test_embedded_subsets_keep_the_fixed_order_and_split_documents():
    kjv = list(iter_documents("embedded:kjv_bible"))
    assert len(kjv) == 66 and kjv[0].startswith("Genesis\n\n1:1 In the beginning") and kjv[-1].startswith("Revelation")
    assert all("<|endoftext|>" not in d for d in kjv)
    both = list(iter_documents("embedded:moby_dick+shakespeare"))
    assert len(both) == 42 + 1
    assert both[0].startswith("ALL'S WELL THAT ENDS WELL") and both[-1].startswith("CHAPTER 1. Loomings.")
    assert list(iter_documents("embedded:kjv_bible", doc_limit=3)) == kjv[:3]


def test_txt_files_split_on_the_separator_or_are_one_document(tmp_path):
    (tmp_path / "many.txt").write_text("first doc\n\n<|endoftext|>\n\n  second doc\n\n<|endoftext|>\n\n", "utf-8")
    (tmp_path / "one.txt").write_text("a single\n\ndocument\n", encoding="utf-8")
    assert list(iter_documents(str(tmp_path / "many.txt"))) == ["first doc", "  second doc"]
    assert list(iter_documents(str(tmp_path / "one.txt"))) == ["a single\n\ndocument"]


def test_jsonl_and_gzipped_jsonl_read_the_text_field(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", [{"body": "alpha", "id": 1}, {"body": ""}, {"body": "beta"}])
    _write_jsonl(tmp_path / "b.jsonl.gz", [{"body": "gamma"}], compress=True)
    assert list(iter_documents(str(tmp_path / "a.jsonl"), text_field="body")) == ["alpha", "beta"]
    assert list(iter_documents(str(tmp_path / "b.jsonl.gz"), text_field="body")) == ["gamma"]


def test_parquet_reads_the_text_column(tmp_path):
    pq.write_table(pa.table({"content": ["p0", None, "p1", "p2"], "n": [0, 1, 2, 3]}), tmp_path / "x.parquet")
    assert list(iter_documents(str(tmp_path / "x.parquet"), text_field="content")) == ["p0", "p1", "p2"]


def test_directories_are_scanned_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "2.txt").write_text("from b", encoding="utf-8")
    (tmp_path / "a" / "1.txt").write_text("from a", encoding="utf-8")
    _write_jsonl(tmp_path / "a" / "0.jsonl", [{"text": "from jsonl"}])
    (tmp_path / "notes.md").write_text("not scanned", encoding="utf-8")
    (tmp_path / ".hidden" / "x.txt").write_text("hidden", encoding="utf-8")
    assert list(iter_documents(str(tmp_path))) == ["from jsonl", "from a", "from b"]
    assert list(iter_documents(str(tmp_path), doc_limit=2)) == ["from jsonl", "from a"]


def test_globs_match_files_in_sorted_order(tmp_path):
    for i in (3, 1, 2):
        (tmp_path / f"part{i}.txt").write_text(f"doc {i}", encoding="utf-8")
    (tmp_path / "other.txt").write_text("other", encoding="utf-8")
    assert list(iter_documents(str(tmp_path / "part*.txt"))) == ["doc 1", "doc 2", "doc 3"]


@pytest.fixture()
def hf_dirs(tmp_path):
    """Local directories in the layouts `datasets.load_dataset(path)` understands."""
    jsonl_dir = tmp_path / "jsonl_ds"
    jsonl_dir.mkdir()
    _write_jsonl(jsonl_dir / "train.jsonl", [{"text": f"json doc {i}", "id": i} for i in range(6)])
    parquet_dir = tmp_path / "parquet_ds"
    parquet_dir.mkdir()
    pq.write_table(pa.table({"story": [f"parquet doc {i}" for i in range(5)]}), parquet_dir / "train.parquet")
    return jsonl_dir, parquet_dir


def test_hf_source_streams_local_jsonl_and_parquet(hf_dirs):
    jsonl_dir, parquet_dir = hf_dirs
    assert list(iter_documents(f"hf:{jsonl_dir}")) == [f"json doc {i}" for i in range(6)]
    assert list(iter_documents(f"hf:{jsonl_dir}::train", doc_limit=2)) == ["json doc 0", "json doc 1"]
    assert list(iter_documents(f"hf:{parquet_dir}", text_field="story")) == [f"parquet doc {i}" for i in range(5)]
    with pytest.raises(DataError, match="has no field 'text' \\(its keys: story\\)"):
        list(iter_documents(f"hf:{parquet_dir}"))


def test_hf_spec_maps_to_the_load_dataset_call(monkeypatch):
    """Hub names take the same code path as the local directories above: one load_dataset call."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": "hub doc"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert list(iter_documents("hf:user/corpus:en:validation")) == ["hub doc"]
    assert list(iter_documents("hf:user/corpus")) == ["hub doc"]
    assert calls == [("user/corpus", "en", "validation", True), ("user/corpus", None, "train", True)]


def test_hf_load_failure_is_a_data_error(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'user/corpus' on the Hub\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(DataError, match="could not load dataset 'user/corpus'") as err:
        list(iter_documents("hf:user/corpus"))
    assert "\n" not in str(err.value)


def test_prepare_data_on_an_hf_source(hf_dirs, tmp_path):
    jsonl_dir, _ = hf_dirs
    cfg = DataConfig(source=f"hf:{jsonl_dir}", tokenizer="gpt2", seq_len=2, val_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"), doc_limit=5)
    data = prepare_data(cfg, progress=False)
    assert data.manifest["documents"] == 5
    text = data.tokenizer.decode(data.train_tokens) + data.tokenizer.decode(data.val_tokens)
    assert sorted(t for t in text.split("<|endoftext|>") if t) == [f"json doc {i}" for i in range(5)]


def test_data_package_imports_no_model_code_and_optional_packages_lazily():
    code = ("import sys, hybridlm.data; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('datasets', 'pyarrow') "
            "or m.startswith(('hybridlm.model', 'hybridlm.ops', 'hybridlm.train'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(CORPUS_DIR.parents[2])})
    assert out.stdout.strip() == "[]"
