"""Named experiments: the reference system's presets and layouts, plus small CPU presets.

The reference built FLA's `GatedDeltaNetForCausalLM` from (hidden x layers x heads, MLP ratio,
seq, batch, steps, warmup, lr) and left the rest at FLA's defaults: GDN head_dim 256 with
num_heads = the heads above, expand_v 1, and an MLP of hidden x ratio (not FLA's 2/3 rule).
Attention layers use heads = kv heads = the same heads, a 2048 sliding window, RoPE 1e4.
"""

from __future__ import annotations

from collections.abc import Callable

from hybridlm.config.config import Config
from hybridlm.config.data_config import DataConfig
from hybridlm.config.model_config import AttentionConfig, ModelConfig
from hybridlm.config.train_config import RunConfig, TrainConfig
from hybridlm.errors import ConfigError

# The 13 layouts of the reference architecture ablation (attention layers of 12).
H100_LAYOUTS: dict[str, list[int]] = {
    "h100_deltanet": [],
    "h100_hybrid_8": [11],
    "h100_hybrid_sparse": [5, 11],
    "h100_hybrid_25": [4, 8, 11],
    "h100_hybrid_late": [8, 9, 10, 11],
    "h100_hybrid_42": [2, 4, 6, 8, 11],
    "h100_hybrid_alternating": [1, 3, 5, 7, 9, 11],
    "h100_hybrid_58": [1, 3, 5, 7, 8, 9, 11],
    "h100_hybrid_67": [1, 2, 4, 5, 7, 8, 10, 11],
    "h100_hybrid_75": [1, 2, 3, 5, 6, 7, 9, 10, 11],
    "h100_hybrid_83": [1, 2, 3, 4, 5, 6, 7, 8, 10, 11],
    "h100_hybrid_92": list(range(1, 12)),
    "h100_transformer": list(range(12)),
}

MEDIUM_LAYOUTS: dict[str, list[int]] = {
    "hybrid_alternating_8l": [1, 3, 5, 7],
    "hybrid_sparse_8l": [3, 7],
    "hybrid_late_8l": [6, 7],
}

RTX4090_LAYOUTS: dict[str, list[int]] = {
    "rtx4090_hybrid": [3, 7, 11],
    "rtx4090_hybrid_alternating": [1, 3, 5, 7, 9, 11],
}


def reference_preset(name: str, hidden: int, layers: int, heads: int, ratio: int, seq: int, batch: int,
                     steps: int, warmup: int, lr: float, attention_layers: list[int] | None = None,
                     description: str = "") -> Config:
    """A model as the reference scripts built it, with their training settings."""
    model = ModelConfig(
        vocab_size=50257, hidden_size=hidden, num_hidden_layers=layers, num_heads=heads, head_dim=256,
        expand_v=1.0, hidden_ratio=ratio, intermediate_size=hidden * ratio,
        attention_layers=list(attention_layers or []),
        attention=AttentionConfig(num_heads=heads, num_kv_heads=heads, window_size=2048, rope_theta=10000.0),
    )
    train = TrainConfig(max_steps=steps, lr=lr, warmup_steps=warmup, batch_size=batch, eval_interval=50,
                        eval_batches=20, save_interval=max(steps // 4, 50))
    return Config(model=model, data=DataConfig(seq_len=seq, tokenizer="gpt2"), train=train,
                  run=RunConfig(name=name, description=description))


def _h100(name: str, layers: list[int]) -> Callable[[], Config]:
    lr = 1e-3 if not layers else 2e-3
    pct = round(100 * len(layers) / 12)
    return lambda: reference_preset(name, 768, 12, 12, 4, 1024, 48, 1000, 100, lr, layers,
                                    f"H100 layout, {pct}% attention (layers {layers or 'none'})")


def _medium(name: str, layers: list[int]) -> Callable[[], Config]:
    return lambda: reference_preset(name, 256, 8, 8, 4, 256, 4, 2000, 100, 3e-4, layers,
                                    f"8-layer hybrid, attention at {layers}")


def _rtx4090(name: str, layers: list[int]) -> Callable[[], Config]:
    return lambda: reference_preset(name, 768, 12, 12, 4, 1024, 32, 1000, 100, 1e-3, layers,
                                    f"RTX 4090 hybrid, attention at {layers}")


def _long_hybrid(name: str, seq: int, batch: int, checkpointing: str) -> Callable[[], Config]:
    """The H100 base at length: `h100_hybrid_sparse`'s layout (attention at 5 and 11, the reference's best)
    with rows of `seq` tokens and `batch` rows, so a step stays near the H100 presets' 48 x 1024 = 49K
    tokens. The attention window stays 2048 (the reference's): attention is local and the GDN layers carry
    everything further back, which is what the long-context evaluations measure. lr 2e-3 is the H100
    hybrids' lr, kept because tokens per step barely change (not yet tuned at length). Positions up to `seq`
    (max_position_embeddings), so evaluation defaults to the trained length. Documents are packed with
    their boundaries (data.packing = "documents"): at 16K-64K most windows span several documents, and
    no state or attention may leak between them."""
    layers = H100_LAYOUTS["h100_hybrid_sparse"]

    def build() -> Config:
        description = (f"long context: h100_hybrid_sparse (attention at {layers}) at {batch} x {seq} tokens, "
                       f"window 2048, lr 2e-3, packed documents, activation checkpointing {checkpointing}")
        config = reference_preset(name, 768, 12, 12, 4, seq, batch, 1000, 100, 2e-3, layers, description)
        config.model.max_position_embeddings = seq
        config.train.activation_checkpointing = checkpointing
        config.data.packing = "documents"
        return config

    return build


def tiny() -> Config:
    """A few hundred thousand parameters; trains in seconds on 2 CPU cores (tests, smoke runs)."""
    model = ModelConfig(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_heads=2, head_dim=32,
                        expand_v=1.0, intermediate_size=128, layout="GA",
                        attention=AttentionConfig(num_heads=2, num_kv_heads=2, window_size=None))
    data = DataConfig(source="embedded:shakespeare", tokenizer="bpe:1024", seq_len=64, val_fraction=0.05)
    train = TrainConfig(max_steps=60, lr=3e-3, warmup_steps=10, batch_size=8, eval_interval=20, eval_batches=4,
                        save_interval=20, log_interval=5)
    return Config(model=model, data=data, train=train,
                  run=RunConfig(name="tiny", description="2-layer hybrid (GDN + attention) for tests"))


def cpu_demo() -> Config:
    """The README demo: a 4-layer hybrid that learns Shakespeare on 2 CPU cores in a few minutes."""
    model = ModelConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_heads=2, head_dim=64,
                        expand_v=1.0, intermediate_size=384, layout="GGAG",
                        attention=AttentionConfig(num_heads=4, num_kv_heads=4, window_size=None))
    data = DataConfig(source="embedded:shakespeare", tokenizer="bpe:4096", seq_len=128, val_fraction=0.05)
    train = TrainConfig(max_steps=600, lr=3e-3, warmup_steps=50, batch_size=16, eval_interval=100,
                        eval_batches=8, save_interval=200, log_interval=10)
    return Config(model=model, data=data, train=train,
                  run=RunConfig(name="cpu_demo", description="4-layer hybrid (3 GDN + 1 attention) on Shakespeare"))


PRESETS: dict[str, Callable[[], Config]] = {
    "tiny": tiny,
    "cpu_demo": cpu_demo,
    "small": lambda: reference_preset("small", 128, 4, 4, 2, 128, 2, 1000, 50, 3e-4, description="pure GDN"),
    "medium": lambda: reference_preset("medium", 256, 8, 8, 4, 256, 4, 2000, 100, 3e-4, description="pure GDN"),
    "large": lambda: reference_preset("large", 512, 12, 8, 4, 512, 8, 5000, 250, 3e-4, description="pure GDN"),
    "xlarge": lambda: reference_preset("xlarge", 1024, 16, 16, 4, 1024, 4, 10000, 500, 3e-4,
                                       description="pure GDN"),
    "rtx4090": lambda: reference_preset("rtx4090", 768, 12, 12, 4, 1024, 32, 1000, 100, 1e-3,
                                        description="experiment 6: pure GDN on an RTX 4090"),
    "h100_base": lambda: reference_preset("h100_base", 768, 12, 12, 4, 1024, 48, 1000, 100, 1e-3,
                                          description="H100 base (pure GDN); the layouts below vary it"),
    **{name: _h100(name, layers) for name, layers in H100_LAYOUTS.items()},
    **{name: _rtx4090(name, layers) for name, layers in RTX4090_LAYOUTS.items()},
    **{name: _medium(name, layers) for name, layers in MEDIUM_LAYOUTS.items()},
    "long_hybrid_16k": _long_hybrid("long_hybrid_16k", 16384, 3, "none"),
    "long_hybrid_64k": _long_hybrid("long_hybrid_64k", 65536, 1, "selective"),
}


def preset(name: str) -> Config:
    """A fresh Config for the named preset (change its fields freely; it is a new object)."""
    if name not in PRESETS:
        close = [p for p in PRESETS if name.lower() in p]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; `hybridlm presets` lists them")
    return PRESETS[name]().validate()


def preset_names() -> list[str]:
    return list(PRESETS)
