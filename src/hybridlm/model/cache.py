"""Decoding state for every layer.

GDN layers keep their recurrent state `[B, HV, K, V]` (float32) and the last K-1 inputs of each
short convolution, so a new token costs the same whatever the length so far. Attention layers
keep keys and values, trimmed to the last window-1 positions when a sliding window is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelCache:
    layers: list[dict] = field(default_factory=list)
    seen_tokens: int = 0

    @classmethod
    def empty(cls, layer_types: list[str]) -> "ModelCache":
        return cls(layers=[{} if t == "gdn" else {"offset": 0} for t in layer_types])

    def reorder(self, index) -> None:
        """Keep batch rows `index` (e.g. after dropping finished sequences)."""
        for layer in self.layers:
            for key, value in list(layer.items()):
                if hasattr(value, "shape"):
                    layer[key] = value[index]
