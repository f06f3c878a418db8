"""Activation checkpointing per block: keep less of the forward for backward, recompute the rest.

`train.activation_checkpointing`:
- "full": a block keeps only its input; backward runs the block's forward again. The most memory
  saved (activations no longer grow with the number of layers), about one more forward of compute.
- "selective": op-level selective checkpointing (`create_selective_checkpoint_contexts`): the
  outputs of matmuls, attention and the GDN chunk kernel are kept, everything cheap (norms, SwiGLU
  and gate activations, rotary, element-wise ops) is recomputed. Most of the memory of the
  element-wise intermediates saved for a small fraction of the compute of "full".

The block is not wrapped in another module: its `forward` is replaced on the instance, so parameter
names and state-dict keys stay FLA's (checkpoints load either way) and the per-block compile and
`fully_shard` see the same modules. Losses and gradients are the same as without checkpointing
(the recomputation repeats the same ops on the same inputs). Applied first, before compile and FSDP
(torchtitan's order). Only training forwards checkpoint: evaluation (no grad) and decoding with a
cache run the block as it is.
"""

from __future__ import annotations

import functools
import types

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from hybridlm.errors import ConfigError

MODES = ("none", "full", "selective")


def apply_activation_checkpointing(model: nn.Module, mode: str) -> None:
    """Checkpoint every block of `model.model.layers` in place (mode "full" or "selective")."""
    if mode not in MODES:
        raise ConfigError(f"train.activation_checkpointing must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        return
    forward = _full_forward if mode == "full" else _selective_forward
    for block in model.model.layers:
        block.forward = types.MethodType(forward, block)  # an instance attribute: the block stays a Block


def checkpointing_of(block: nn.Module) -> str:
    """"full", "selective" or "none": what `apply_activation_checkpointing` did to this block."""
    forward = getattr(block.__dict__.get("forward"), "__func__", None)
    return {_full_forward: "full", _selective_forward: "selective"}.get(forward, "none")


def _full_forward(block: nn.Module, *args, **kwargs) -> torch.Tensor:
    forward = type(block).forward  # the class's own forward (FSDP's subclass inherits it)
    if kwargs.get("cache") is not None or not torch.is_grad_enabled():
        return forward(block, *args, **kwargs)
    return checkpoint(forward, block, *args, use_reentrant=False, **kwargs)


def _selective_forward(block: nn.Module, *args, **kwargs) -> torch.Tensor:
    forward = type(block).forward
    if kwargs.get("cache") is not None or not torch.is_grad_enabled():
        return forward(block, *args, **kwargs)
    return checkpoint(forward, block, *args, use_reentrant=False, context_fn=_keep_expensive_outputs, **kwargs)


def _keep_expensive_outputs():
    return create_selective_checkpoint_contexts(_policy)


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _expensive_ops() else CheckpointPolicy.PREFER_RECOMPUTE


@functools.cache
def _expensive_ops() -> frozenset:
    """The ops whose outputs selective checkpointing keeps: matmuls, attention, the GDN chunk kernel."""
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "baddbmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu"]
    ops = {getattr(aten, name).default for name in names if hasattr(aten, name)}
    import hybridlm.ops.gdn_custom_op  # noqa: F401 - registers torch.ops.hybridlm.gdn_chunk

    ops.add(torch.ops.hybridlm.gdn_chunk.default)
    return frozenset(ops)
