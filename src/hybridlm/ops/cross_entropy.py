"""Cross-entropy from hidden states without a full `[N, vocab]` float32 logits tensor.

The LM head and the loss are fused and processed in row chunks: the forward keeps only the
per-row log-sum-exp, the backward recomputes one chunk of logits at a time. Peak memory is one
chunk of logits instead of all of them (at vocab 50k and 48x1024 tokens that is 10 GB saved).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _chunk_rows(vocab_size: int, device: torch.device | None = None) -> int:
    """Rows per chunk: ~128 MB of float32 logits on CPU, ~1 GB on a GPU (fewer, larger matmuls)."""
    budget_elements = 1 << 28 if device is not None and device.type == "cuda" else 1 << 25
    return max(1, budget_elements // max(vocab_size, 1))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):  # type: ignore[override]
        n = hidden.shape[0]
        acc_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        lse = torch.empty(n, dtype=acc_dtype, device=hidden.device)
        target_logit = torch.zeros(n, dtype=acc_dtype, device=hidden.device)
        valid = targets != IGNORE_INDEX
        safe_targets = torch.where(valid, targets, torch.zeros_like(targets))
        for start in range(0, n, chunk_rows):
            end = min(start + chunk_rows, n)
            logits = (hidden[start:end] @ weight.t()).to(acc_dtype)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            target_logit[start:end] = logits.gather(1, safe_targets[start:end, None])[:, 0]
        count = valid.sum().clamp(min=1)
        losses = torch.where(valid, lse - target_logit, torch.zeros_like(lse))
        ctx.save_for_backward(hidden, weight, safe_targets, valid, lse, count)
        ctx.chunk_rows = chunk_rows
        return losses.sum() / count

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        hidden, weight, targets, valid, lse, count = ctx.saved_tensors
        scale = (grad_out / count).to(lse.dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            end = min(start + ctx.chunk_rows, hidden.shape[0])
            h = hidden[start:end]
            logits = (h @ weight.t()).to(lse.dtype)
            d_logits = torch.exp(logits - lse[start:end, None])
            d_logits[torch.arange(end - start, device=h.device), targets[start:end]] -= 1.0
            d_logits *= (valid[start:end, None] * scale)
            d_logits = d_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[start:end] = d_logits @ weight.to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += (d_logits.t() @ h).to(lse.dtype)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets` (IGNORE_INDEX rows skipped).

    hidden: [..., D], weight: [V, D], targets: [...] (same leading shape).
    """
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    targets1d = targets.reshape(-1)
    if hidden2d.shape[0] != targets1d.shape[0]:
        raise ValueError(f"targets has {targets1d.shape[0]} rows but hidden has {hidden2d.shape[0]}")
    if torch.is_autocast_enabled(hidden2d.device.type):
        # custom Functions' backward runs outside autocast: cast once here so both passes use the
        # low-precision matmuls (logits are still accumulated in float32 inside)
        compute = torch.get_autocast_dtype(hidden2d.device.type)
        hidden2d = hidden2d.to(compute)
    if weight.dtype != hidden2d.dtype:
        weight = weight.to(hidden2d.dtype)
    rows = chunk_rows or _chunk_rows(weight.shape[0], hidden2d.device)
    return _LinearCrossEntropy.apply(hidden2d, weight, targets1d, rows)


@torch.no_grad()
def linear_cross_entropy_stats(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For evaluation: (summed loss, number of argmax hits, number of counted targets), on device.

    Same chunking as the training loss, so validating a 50k-vocabulary model never holds all logits.
    """
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    targets1d = targets.reshape(-1)
    weight = weight.to(hidden2d.dtype)
    rows = chunk_rows or _chunk_rows(weight.shape[0], hidden2d.device)
    acc_dtype = torch.float64 if hidden2d.dtype == torch.float64 else torch.float32
    loss_sum = torch.zeros((), dtype=acc_dtype, device=hidden2d.device)
    hits = torch.zeros((), dtype=torch.long, device=hidden2d.device)
    valid = targets1d != IGNORE_INDEX
    for start in range(0, hidden2d.shape[0], rows):
        end = min(start + rows, hidden2d.shape[0])
        logits = (hidden2d[start:end] @ weight.t()).to(acc_dtype)
        t, ok = targets1d[start:end], valid[start:end]
        safe = torch.where(ok, t, torch.zeros_like(t))
        per_row = torch.logsumexp(logits, -1) - logits.gather(1, safe[:, None])[:, 0]
        loss_sum += torch.where(ok, per_row, torch.zeros_like(per_row)).sum()
        hits += ((logits.argmax(-1) == t) & ok).sum()
    return loss_sum, hits, valid.sum()
