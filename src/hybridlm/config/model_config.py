"""The model's shape: widths, heads, and which layers are attention.

Field names follow FLA's `GatedDeltaNetConfig` wherever the concept is the same, so a config
moves between the two without a dictionary of renames. The layer layout is given either as a
list of attention layer indices or as a pattern string of G (Gated DeltaNet) and A (attention).
No torch import here: configs are built, validated and printed without loading the framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hybridlm.config.read_only import ReadOnlyWhenResolved
from hybridlm.errors import ConfigError

GDN, ATTENTION = "G", "A"

# Qwen3-Next-style names used by the reference documents for the GDN settings.
GDN_ALIASES = {
    "linear_num_key_heads": "num_heads",
    "linear_num_value_heads": "num_v_heads",
    "linear_key_head_dim": "head_dim",
    "linear_conv_kernel_dim": "conv_size",
    # linear_value_head_dim -> expand_v = value_head_dim / head_dim (resolved in `apply_gdn_aliases`)
}


@dataclass
class AttentionConfig(ReadOnlyWhenResolved):
    """Softmax attention layers (FLA's `attn` dict): heads, GQA, sliding window, RoPE."""

    num_heads: int = 12
    num_kv_heads: int | None = None
    window_size: int | None = None
    qkv_bias: bool = False
    rope_theta: float = 10000.0

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads


@dataclass
class ModelConfig(ReadOnlyWhenResolved):
    """A hybrid GDN / attention decoder. `layout` or `attention_layers` places the attention."""

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    # Gated DeltaNet mixer
    num_heads: int = 12
    head_dim: int = 256
    num_v_heads: int | None = None
    expand_v: float = 1.0
    use_gate: bool = True
    use_short_conv: bool = True
    conv_size: int = 4
    allow_neg_eigval: bool = False
    # MLP: FLA's rule (2/3 * hidden * ratio rounded up to 256) unless intermediate_size is set
    hidden_ratio: float = 4
    intermediate_size: int | None = None
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    max_position_embeddings: int = 2048
    # layout: which layers are softmax attention
    attention_layers: list[int] = field(default_factory=list)
    layout: str | None = None
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    # kernels for the GDN op: "auto" (FLA on CUDA when usable), "fla" or "torch"
    kernels: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.attention, dict):
            self.attention = AttentionConfig(**self.attention)
        self.attention_layers = list(self.attention_layers or [])
        self.validate()

    # ----------------------------------------------------------------- layout
    @property
    def attention_layer_set(self) -> frozenset[int]:
        """Attention layer indices, from `layout` when given, else from `attention_layers`."""
        if self.layout:
            return frozenset(i for i, c in enumerate(self.layout.upper()) if c == ATTENTION)
        return frozenset(self.attention_layers)

    @property
    def layer_types(self) -> list[str]:
        """'gdn' or 'attention' for every layer."""
        attn = self.attention_layer_set
        return ["attention" if i in attn else "gdn" for i in range(self.num_hidden_layers)]

    @property
    def layout_string(self) -> str:
        return "".join(ATTENTION if t == "attention" else GDN for t in self.layer_types)

    @property
    def attention_fraction(self) -> float:
        return len(self.attention_layer_set) / self.num_hidden_layers

    # ------------------------------------------------------------ derived sizes
    @property
    def gdn_value_heads(self) -> int:
        return self.num_v_heads if self.num_v_heads is not None else self.num_heads

    @property
    def head_v_dim(self) -> int:
        return int(round(self.head_dim * self.expand_v))

    @property
    def mlp_intermediate_size(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        size = int(self.hidden_size * self.hidden_ratio * 2 / 3)
        return 256 * ((size + 255) // 256)

    @property
    def attention_head_dim(self) -> int:
        return self.hidden_size // self.attention.num_heads

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError (one line, naming the field) for any inconsistent setting."""
        positive = ["vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim", "conv_size"]
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")
        n = self.num_hidden_layers
        if self.layout is not None:
            bad = sorted(set(self.layout.upper()) - {GDN, ATTENTION})
            if bad:
                raise ConfigError(
                    f"model.layout {self.layout!r} has characters {bad}; use only G (Gated DeltaNet) and A (attention)")
            if len(self.layout) != n:
                raise ConfigError(
                    f"model.layout {self.layout!r} has {len(self.layout)} layers but model.num_hidden_layers is {n}")
            if self.attention_layers and frozenset(self.attention_layers) != self.attention_layer_set:
                raise ConfigError(
                    f"model.layout {self.layout!r} and model.attention_layers {self.attention_layers} disagree; set only one")
        for idx in self.attention_layers:
            if isinstance(idx, bool) or not isinstance(idx, int):
                raise ConfigError(f"model.attention_layers must hold integers, got {idx!r}")
            if not 0 <= idx < n:
                raise ConfigError(f"model.attention_layers has index {idx}, outside 0..{n - 1} (num_hidden_layers={n})")
        if len(set(self.attention_layers)) != len(self.attention_layers):
            dups = sorted({i for i in self.attention_layers if self.attention_layers.count(i) > 1})
            raise ConfigError(f"model.attention_layers has duplicate indices {dups}")
        if self.kernels not in ("auto", "fla", "torch"):
            raise ConfigError(f"model.kernels must be 'auto', 'fla' or 'torch', got {self.kernels!r}")
        if not math.isclose(self.head_dim * self.expand_v, self.head_v_dim, rel_tol=1e-6) or self.head_v_dim <= 0:
            raise ConfigError(
                f"model.expand_v={self.expand_v} times model.head_dim={self.head_dim} is not a positive integer")
        hv = self.gdn_value_heads
        if hv <= 0 or hv % self.num_heads:
            raise ConfigError(f"model.num_v_heads={hv} must be a positive multiple of model.num_heads={self.num_heads}")
        if self.attention_layer_set:
            a = self.attention
            if a.num_heads <= 0 or self.hidden_size % a.num_heads:
                raise ConfigError(
                    f"model.attention.num_heads={a.num_heads} does not divide model.hidden_size={self.hidden_size}")
            if self.attention_head_dim % 2:
                raise ConfigError(
                    f"attention head dim {self.attention_head_dim} (hidden_size / attention.num_heads) must be even for RoPE")
            if a.kv_heads <= 0 or a.num_heads % a.kv_heads:
                raise ConfigError(
                    f"model.attention.num_kv_heads={a.kv_heads} must divide model.attention.num_heads={a.num_heads}")
            if a.window_size is not None and a.window_size <= 0:
                raise ConfigError(f"model.attention.window_size must be positive or unset, got {a.window_size}")
            if not a.rope_theta > 0:
                raise ConfigError(f"model.attention.rope_theta must be positive, got {a.rope_theta}")
        if self.intermediate_size is not None and self.intermediate_size <= 0:
            raise ConfigError(f"model.intermediate_size must be positive, got {self.intermediate_size}")
        if self.norm_eps <= 0:
            raise ConfigError(f"model.norm_eps must be positive, got {self.norm_eps}")


def apply_gdn_aliases(values: dict, current_head_dim: int | None = None) -> dict:
    """Rename Qwen3-Next-style GDN keys (`linear_num_key_heads`, ...) to ours, in a new dict.

    `linear_value_head_dim` becomes `expand_v` relative to the key head dim given in the same
    dict, else `current_head_dim` (the config being edited), else the default."""
    out = {}
    for key, value in values.items():
        if key in GDN_ALIASES:
            out[GDN_ALIASES[key]] = value
        elif key != "linear_value_head_dim":
            out[key] = value
    if "linear_value_head_dim" in values:
        head_dim = out.get("head_dim", current_head_dim or ModelConfig.head_dim)
        out["expand_v"] = values["linear_value_head_dim"] / head_dim
    return out
