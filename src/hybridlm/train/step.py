"""One optimisation step, the same for the trainer and every benchmark.

forward + backward over the micro-batches (gradient accumulation), clip, then AdamW (or, under
the non-finite guard's `skip` policy, no update at all). Everything returned stays on the device,
so a step never waits for the host; a benchmark number is therefore the product's number.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from hybridlm.data.packing import DocumentBatch
from hybridlm.train.nonfinite import NonFiniteGuard
from hybridlm.train.precision import Precision


@dataclass
class StepResult:
    loss: torch.Tensor        # mean loss over the micro-batches (float32, on the device)
    grad_norm: torch.Tensor   # before clipping
    finite: torch.Tensor      # bool: loss and gradient norm were finite (under nan_policy skip: applied)


def model_inputs(batch: torch.Tensor | DocumentBatch) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(inputs, labels, keywords) of a batch: [B, T + 1] windows, or packed documents with their boundaries."""
    if isinstance(batch, DocumentBatch):
        return batch.inputs, batch.labels, {"cu_seqlens": batch.cu_seqlens}
    return batch[:, :-1], batch[:, 1:], {}


def train_step(forward: Callable[..., torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: Iterable[torch.Tensor | DocumentBatch], precision: Precision, grad_clip: float,
               guard: NonFiniteGuard, no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
               ) -> StepResult:
    """`forward(inputs, labels, cu_seqlens=None) -> loss` (the model, its compiled, DDP or FSDP2 form); each
    batch is [B, T + 1] tokens, or a `DocumentBatch` (data.packing = "documents").

    `no_sync` (train/parallel.py) skips the gradient reduction on every micro-batch but the last."""
    batches = list(micro_batches)
    total = torch.zeros((), device=precision.device)
    for i, batch in enumerate(batches):
        inputs, labels, varlen = model_inputs(batch.to(precision.device, non_blocking=True))
        last = i == len(batches) - 1
        with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
            with precision.autocast():
                loss = forward(inputs, labels, **varlen)
            (loss / len(batches)).backward()
        total += loss.detach().float() / len(batches)
    max_norm = grad_clip if grad_clip > 0 else math.inf  # inf: the norm only, gradients unchanged
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor of the norm over all shards
        grad_norm = grad_norm.full_tensor()
    finite = guard.finite(total, grad_norm)
    guard.step_optimizer(optimizer, finite)
    optimizer.zero_grad(set_to_none=True)
    return StepResult(total, grad_norm, finite)


def loss_of(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss as `forward(inputs, labels)`: the fused LM-head loss, no logits tensor."""

    def forward(inputs: torch.Tensor, labels: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        if cu_seqlens is None:
            return model(inputs, labels=labels, return_logits=False).loss
        return model(inputs, labels=labels, return_logits=False, cu_seqlens=cu_seqlens).loss

    return forward


def validation_stats(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                     cu_seqlens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, argmax hits, counted targets) of one batch, through the model's own forward.

    The LM head is scored on the backbone's output inside `model(...)`, where FSDP2 has gathered the
    root's weights (embeddings, LM head), so the same call serves a plain, DDP'd or sharded model; no
    logits tensor is made."""
    from hybridlm.ops.cross_entropy import linear_cross_entropy_stats

    stats = []

    def score(module, args, hidden):
        stats.append(linear_cross_entropy_stats(hidden, model.lm_head.weight, labels))

    handle = model.model.register_forward_hook(score)
    try:
        model(inputs, return_logits=False, **({} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}))
    finally:
        handle.remove()
    return stats[0]
