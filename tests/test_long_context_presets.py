"""The long-context presets: the H100 base at 16K and 64K tokens a row, near the same tokens per step."""

from __future__ import annotations

import pytest

from hybridlm.config import preset, preset_names, resolve
from hybridlm.config.presets import H100_LAYOUTS


@pytest.mark.parametrize("name, seq_len, batch, checkpointing", [
    ("long_hybrid_16k", 16384, 3, ("none", "selective", "full")),
    ("long_hybrid_64k", 65536, 1, ("selective", "full")),
])
def test_long_presets_resolve_from_the_h100_base(name, seq_len, batch, checkpointing):
    assert name in preset_names()
    config = resolve(preset=name)
    base = preset("h100_hybrid_sparse")
    assert config.data.seq_len == seq_len and config.train.batch_size == batch
    h100_tokens = base.train.batch_size * base.data.seq_len  # 48 x 1024
    assert abs(batch * seq_len - h100_tokens) / h100_tokens <= 1 / 3
    assert config.model.attention_layers == H100_LAYOUTS["h100_hybrid_sparse"]
    assert config.model.attention.window_size == 2048 and config.model.max_position_embeddings == seq_len
    assert config.train.lr == base.train.lr and config.train.activation_checkpointing in checkpointing
    assert config.data.packing == "documents" and base.data.packing == "stream"
    for field in ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "intermediate_size", "vocab_size"):
        assert getattr(config.model, field) == getattr(base.model, field)
    assert "window 2048" in config.run.description and "lr 2e-3" in config.run.description
    # a user can still shorten the run or change the window
    edited = resolve(preset=name, overrides=["train.max_steps=20", "model.attention.window_size=4096"])
    assert edited.train.max_steps == 20 and edited.model.attention.window_size == 4096


def test_presets_command_lists_the_long_presets(capsys):
    from hybridlm.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "long_hybrid_16k" in out and "long_hybrid_64k" in out and "65536" in out
