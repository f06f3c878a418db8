"""data.packing = "documents": the sampler's document batches, validation packed alike, training end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hybridlm.cli import main
from hybridlm.config import preset, resolve
from hybridlm.data import TrainSampler, validation_batches
from hybridlm.data.packing import IGNORE_LABEL, DocumentBatch, batch_for, pack_documents
from hybridlm.errors import ConfigError, DataError
from hybridlm.ops.documents import segments
from hybridlm.runs import RunDir

EOS = 0
SEQ = 16


def stream_of(lengths, seed=0) -> np.ndarray:
    """Documents of `lengths` tokens (the last one eos), laid end to end as the shards store them."""
    rng = np.random.default_rng(seed)
    docs = [np.append(rng.integers(1, 50, n - 1), EOS) for n in lengths]
    return np.concatenate(docs).astype(np.uint16)


def test_pack_documents_boundaries_and_labels():
    windows = torch.tensor([[5, 6, 0, 7, 8, 0, 9], [1, 0, 0, 2, 3, 4, 5]])
    batch = pack_documents(windows, EOS)
    assert batch.inputs.tolist() == [[5, 6, 0, 7, 8, 0, 1, 0, 0, 2, 3, 4]]
    assert batch.cu_seqlens.dtype == torch.int32
    assert batch.cu_seqlens.tolist() == [0, 3, 6, 8, 9, 12]  # after each eos, and at every row's start
    # the target after an eos is the next document's first token: skipped; the eos itself is a target
    assert batch.labels.tolist() == [[6, 0, -100, 8, 0, -100, 0, -100, -100, 3, 4, 5]]


def test_sampler_serves_the_stream_windows_with_whole_documents():
    lengths = [3, 20, 1, 1, 40, 7, 16, 17, 5]
    tokens = stream_of(lengths * 4)
    stream = TrainSampler(tokens, batch_size=4, seq_len=SEQ, seed=7)
    docs = TrainSampler(tokens, batch_size=4, seq_len=SEQ, seed=7, packing="documents", eos_id=EOS)
    for _ in range(5):
        windows, batch = stream.next_batch(), docs.next_batch()
        assert isinstance(batch, DocumentBatch) and batch.rows == 4
        assert torch.equal(batch_for(windows, "stream", None), windows)
        assert torch.equal(batch.inputs[0], windows[:, :-1].reshape(-1))  # the same tokens, the same order
        labels = torch.where(windows[:, :-1] == EOS, IGNORE_LABEL, windows[:, 1:])
        assert torch.equal(batch.labels[0], labels.reshape(-1))
        for s, e in segments(batch.cu_seqlens):
            row, start = divmod(s, SEQ)
            piece = batch.inputs[0, s:e]
            assert e - s >= 1 and (e - 1) // SEQ == row  # a segment never spans two rows
            assert not (piece[:-1] == EOS).any()  # an eos only ever ends a segment
            if start > 0:
                assert int(batch.inputs[0, s - 1]) == EOS  # inside a row a segment starts after an eos
    assert docs.state_dict() == stream.state_dict()  # one integer, as before


def test_segment_starts_inside_rows_are_exactly_the_document_starts():
    lengths = [5, 9, 2, 30, 1, 11]
    tokens = stream_of(lengths)
    sampler = TrainSampler(tokens, batch_size=1, seq_len=len(tokens) - 1, seed=0, packing="documents", eos_id=EOS)
    batch = sampler.next_batch()
    assert batch.cu_seqlens.tolist() == np.cumsum([0] + lengths[:-1]).tolist() + [len(tokens) - 1]


def test_validation_batches_follow_the_same_packing():
    tokens = stream_of([4, 30, 2, 9] * 10)
    windows = validation_batches(tokens, batch_size=4, seq_len=SEQ, num_batches=3)
    packed = [batch_for(w[0::2], "documents", EOS) for w in windows]  # a rank's rows, then packed
    for w, p in zip(windows, packed):
        assert p.rows == 2 and torch.equal(p.inputs, pack_documents(w[0::2], EOS).inputs)


def test_packing_errors_are_one_line():
    tokens = stream_of([10] * 10)
    with pytest.raises(DataError, match="data.packing is 'sentences'"):
        TrainSampler(tokens, batch_size=2, seq_len=SEQ, seed=0, packing="sentences")
    with pytest.raises(DataError, match="needs a tokenizer with an end-of-document"):
        TrainSampler(tokens, batch_size=2, seq_len=SEQ, seed=0, packing="documents", eos_id=None)
    with pytest.raises(ConfigError, match="data.packing must be 'stream' or 'documents'"):
        resolve("tiny", overrides=["data.packing=docs"])
    with pytest.raises(ConfigError, match="cannot run compiled GDN blocks"):
        resolve("tiny", overrides=["data.packing=documents", "train.compile=true"])


def test_stream_is_the_default():
    assert preset("tiny").data.packing == "stream"
    stream = TrainSampler(stream_of([10] * 10), batch_size=2, seq_len=SEQ, seed=0)
    assert isinstance(stream.next_batch(), torch.Tensor)


def _documents_source(path) -> str:
    rng = np.random.default_rng(0)
    words = "the king queen said to of and a in his her my lord good".split()
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(400):
            f.write(json.dumps({"text": " ".join(rng.choice(words, rng.integers(3, 40)))}) + "\n")
    return str(path)


def test_training_with_documents_passes_the_boundaries_end_to_end(tmp_path, monkeypatch):
    """A short run on many small documents: every training and validation forward gets cu_seqlens."""
    from hybridlm.model import HybridLM
    from hybridlm.train import train

    seen = []
    original = HybridLM.forward

    def spy(self, input_ids, *args, cu_seqlens=None, **kwargs):
        seen.append((tuple(input_ids.shape), None if cu_seqlens is None else cu_seqlens.numel() - 1))
        return original(self, input_ids, *args, cu_seqlens=cu_seqlens, **kwargs)

    monkeypatch.setattr(HybridLM, "forward", spy)
    source = _documents_source(tmp_path / "docs.jsonl")
    config = resolve("tiny", overrides=[f"data.source={source}", "data.packing=documents", "train.max_steps=6",
                                        "data.val_fraction=0.2", "train.eval_batches=2",
                                        "train.eval_interval=3", "train.log_interval=3", "train.save_interval=100"])
    result = train(config, out=tmp_path / "run", progress=False)
    assert seen and all(shape == (1, 8 * 64) and docs is not None for shape, docs in seen)
    assert max(docs for _, docs in seen) > 8 * 3  # many documents per batch, not only the rows
    assert np.isfinite(result["results"]["final_val_loss"])


def test_cli_tiny_with_documents_packing(tmp_path):
    out = tmp_path / "tiny-docs"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress", "--set", "data.packing=documents",
                 "--set", "train.max_steps=4", "--set", "train.eval_interval=2", "--set", "train.log_interval=2"]) == 0
    events = [e for e in RunDir(out).read_metrics() if e["event"] == "eval"]
    assert events and all(np.isfinite(e["val_loss"]) for e in events)
    assert json.loads((out / "results.json").read_text())["config"]["data"]["packing"] == "documents"
