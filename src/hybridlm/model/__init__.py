"""The model: modules readable one concept per file, parameter names as FLA's."""

from hybridlm.model.cache import ModelCache
from hybridlm.model.lm import HybridLM, LMOutput

__all__ = ["HybridLM", "LMOutput", "ModelCache"]
