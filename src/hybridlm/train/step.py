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

from hybridlm.train.nonfinite import NonFiniteGuard
from hybridlm.train.precision import Precision


@dataclass
class StepResult:
    loss: torch.Tensor        # mean loss over the micro-batches (float32, on the device)
    grad_norm: torch.Tensor   # before clipping
    finite: torch.Tensor      # bool: loss and gradient norm were finite (under nan_policy skip: applied)


def train_step(forward: Callable[..., torch.Tensor], model: nn.Module, optimizer: torch.optim.Optimizer,
               micro_batches: Iterable[torch.Tensor], precision: Precision, grad_clip: float,
               guard: NonFiniteGuard, no_sync: Callable[[], contextlib.AbstractContextManager] | None = None
               ) -> StepResult:
    """`forward(inputs, labels) -> loss` (the model, its compiled, DDP or FSDP2 form); each batch is [B, T + 1]
    tokens.

    `no_sync` (train/parallel.py) skips the gradient reduction on every micro-batch but the last."""
    batches = list(micro_batches)
    total = torch.zeros((), device=precision.device)
    for i, batch in enumerate(batches):
        batch = batch.to(precision.device, non_blocking=True)
        last = i == len(batches) - 1
        with (contextlib.nullcontext() if last or no_sync is None else no_sync()):
            with precision.autocast():
                loss = forward(batch[:, :-1], batch[:, 1:])
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

    def forward(inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model(inputs, labels=labels, return_logits=False).loss

    return forward


def validation_stats(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        model(inputs, return_logits=False)
    finally:
        handle.remove()
    return stats[0]
