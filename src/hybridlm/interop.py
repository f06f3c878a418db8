"""FLA / Hugging Face checkpoint directories: `config.json` + `model.safetensors`.

Our parameter names and shapes equal FLA's `GatedDeltaNetForCausalLM`, so export is a config
translation plus the state dict. A pure-GDN export loads into FLA with `from_pretrained`;
hybrids carry FLA's `attn` dict (FLA's own attention layer needs flash-attn to be built).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hybridlm.config.model_config import AttentionConfig, ModelConfig
from hybridlm.errors import CheckpointError

FLA_MODEL_TYPE = "gated_deltanet"
FLA_ARCHITECTURE = "GatedDeltaNetForCausalLM"


def to_fla_config(config: ModelConfig) -> dict[str, Any]:
    """Our ModelConfig as the keyword arguments of FLA 0.6.0's `GatedDeltaNetConfig`."""
    attention_layers = sorted(config.attention_layer_set)
    attn = None
    if attention_layers:
        a = config.attention
        attn = {"layers": attention_layers, "num_heads": a.num_heads, "num_kv_heads": a.kv_heads,
                "qkv_bias": a.qkv_bias, "window_size": a.window_size, "rope_theta": a.rope_theta}
    return {
        "model_type": FLA_MODEL_TYPE,
        "architectures": [FLA_ARCHITECTURE],
        "attn_mode": "chunk",
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_heads": config.num_heads,
        "head_dim": config.head_dim,
        "num_v_heads": config.num_v_heads,
        "expand_v": config.expand_v,
        "use_gate": config.use_gate,
        "use_short_conv": config.use_short_conv,
        "conv_size": config.conv_size,
        "allow_neg_eigval": config.allow_neg_eigval,
        "hidden_ratio": config.hidden_ratio,
        "intermediate_size": config.mlp_intermediate_size,
        "hidden_act": "swish",
        "norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "initializer_range": config.initializer_range,
        "max_position_embeddings": config.max_position_embeddings,
        "vocab_size": config.vocab_size,
        "attn": attn,
        "fuse_cross_entropy": True,
        "fuse_norm": True,
        "fuse_swiglu": True,
        "use_cache": True,
    }


def from_fla_config(values: dict[str, Any]) -> ModelConfig:
    """An FLA `gated_deltanet` config.json (as a dict) as our ModelConfig."""
    if values.get("model_type", FLA_MODEL_TYPE) != FLA_MODEL_TYPE:
        raise CheckpointError(f"config.json has model_type {values.get('model_type')!r}; "
                              f"only FLA's {FLA_MODEL_TYPE!r} models can be read")
    attn = values.get("attn")
    if isinstance(attn, list):
        if len(attn) != 1:
            raise CheckpointError("config.json has several attention specifications; hybridlm supports one")
        attn = attn[0]
    attention = AttentionConfig()
    layers: list[int] = []
    if attn:
        layers = list(attn["layers"])
        attention = AttentionConfig(num_heads=attn["num_heads"], num_kv_heads=attn.get("num_kv_heads"),
                                    window_size=attn.get("window_size"), qkv_bias=attn.get("qkv_bias", False),
                                    rope_theta=attn.get("rope_theta", 10000.0))
    if values.get("hidden_act", "swish") != "swish":
        raise CheckpointError(f"config.json has hidden_act {values['hidden_act']!r}; only 'swish' is supported")
    defaults = ModelConfig()
    return ModelConfig(
        vocab_size=values.get("vocab_size", 32000),
        hidden_size=values.get("hidden_size", 2048),
        num_hidden_layers=values.get("num_hidden_layers", 21),
        num_heads=values.get("num_heads", 6),
        head_dim=values.get("head_dim", 256),
        num_v_heads=values.get("num_v_heads"),
        expand_v=float(values.get("expand_v", 2.0)),
        use_gate=values.get("use_gate", True),
        use_short_conv=values.get("use_short_conv", True),
        conv_size=values.get("conv_size", 4),
        allow_neg_eigval=values.get("allow_neg_eigval", False),
        hidden_ratio=values.get("hidden_ratio") or 4,
        intermediate_size=values.get("intermediate_size"),
        norm_eps=values.get("norm_eps", 1e-6),
        tie_word_embeddings=values.get("tie_word_embeddings", False),
        initializer_range=values.get("initializer_range", defaults.initializer_range),
        max_position_embeddings=values.get("max_position_embeddings", 2048),
        attention_layers=layers,
        attention=attention,
    )


def save_fla(model, path: str | Path) -> Path:
    """Write `model` as an FLA checkpoint directory (config.json + model.safetensors)."""
    from safetensors.torch import save_model

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_fla_config(model.config), indent=2) + "\n")
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt", "producer": "hybridlm"})
    return out


def load_fla(path: str | Path, kernels: str = "auto"):
    """Read an FLA checkpoint directory (ours or FLA's own `save_pretrained`) as a HybridLM."""
    from safetensors.torch import load_model

    from hybridlm.model import HybridLM

    src = Path(path)
    config_file, weights = src / "config.json", src / "model.safetensors"
    if not config_file.is_file() or not weights.is_file():
        raise CheckpointError(f"{src} is not an FLA checkpoint directory (needs config.json and model.safetensors)")
    config = from_fla_config(json.loads(config_file.read_text()))
    config.kernels = kernels
    model = HybridLM(config)
    missing, unexpected = load_model(model, str(weights), strict=False)
    # a tied head is stored once; anything else missing or extra means the files do not match
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{weights} does not match its config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model
