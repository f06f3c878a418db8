"""Sequence-mixing and loss ops with a pure-PyTorch path everywhere and fast kernels where available."""

from hybridlm.ops.gated_delta_rule import available_backends, gated_delta_rule, gated_delta_rule_with_gates

__all__ = ["available_backends", "gated_delta_rule", "gated_delta_rule_with_gates"]
