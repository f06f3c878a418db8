"""hybridlm: train, ablate and evaluate hybrid Gated DeltaNet / attention language models.

The heavy parts (torch models, the trainer) are imported lazily so that `hybridlm --help`,
config handling and `hybridlm presets` start instantly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hybridlm.config import AttentionConfig, Config, DataConfig, ModelConfig, TrainConfig, preset

__version__ = "0.1.0"

_LAZY = {
    "HybridLM": ("hybridlm.model", "HybridLM"),
    "train": ("hybridlm.train", "train"),
    "load_run": ("hybridlm.runs", "load_run"),
}

if TYPE_CHECKING:  # pragma: no cover
    from hybridlm.model import HybridLM
    from hybridlm.runs import load_run
    from hybridlm.train import train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'hybridlm' has no attribute {name!r}")


__all__ = ["AttentionConfig", "Config", "DataConfig", "ModelConfig", "TrainConfig", "preset", "HybridLM",
           "train", "load_run", "__version__"]
