"""Sequence-mixing and loss ops with a pure-PyTorch path everywhere and fast kernels where available."""

from hybridlm.ops.gated_delta_rule import available_backends, gated_delta_rule

__all__ = ["available_backends", "gated_delta_rule"]
