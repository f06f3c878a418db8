"""The one log-likelihood function behind `hybridlm eval` and the lm-eval bridge.

For each request (context ids, continuation ids) it returns (sum of log p(continuation token),
whether greedy decoding reproduces every continuation token) -- lm-eval's `loglikelihood`
contract. Requests are sorted longest first and batched with right padding; a causal model never
looks right, so the padding changes no real position and only real positions are read. Inputs
longer than the window keep their last `max_length + 1` tokens (minus the last), as HFLM does.
Only continuation positions go through the LM head, in row chunks, so a 50k vocabulary never
needs a [batch, length, vocab] tensor.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hybridlm.errors import HybridLMError

TokenRequest = tuple[Sequence[int], Sequence[int]]
HEAD_BUDGET_ELEMENTS = 1 << 25  # logits elements per head chunk (128 MB of float32)
PRECISIONS = ("auto", "fp32", "bf16")


def scoring_precision(device: torch.device, precision: str = "auto") -> str:
    """'bf16' or 'fp32' for the backbone: `auto` is bf16 on CUDA (what training ran, and the dtype FLA's
    kernels are compiled and tuned for in a training run) and float32 elsewhere."""
    if precision not in PRECISIONS:
        raise HybridLMError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def inference_precision(device: torch.device, precision: str = "auto"):
    """The backbone's autocast context. For hybridlm models the LM head and the log-softmax always run
    in float32 (`_target_logprobs`), so the log-likelihoods keep full precision."""
    if scoring_precision(device, precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_window(model: nn.Module, fallback: int = 2048) -> int:
    """The model's own position limit (`config.max_position_embeddings`), as HFLM would read it."""
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or fallback)


def model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def truncate_for_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> list[int]:
    """The model input: context + continuation without its last token, cut from the left."""
    if not context or not continuation:
        raise ValueError("every request needs at least one context token and one continuation token")
    if len(continuation) > max_length:
        raise HybridLMError(f"an answer of {len(continuation)} tokens does not fit the context window of "
                            f"{max_length} tokens; raise --max-length (max_length)")
    return (list(context) + list(continuation))[-(max_length + 1):][:-1]


@torch.no_grad()
def score_requests(model: nn.Module, requests: Sequence[TokenRequest], batch_size: int = 16,
                   max_length: int | None = None, progress: bool = False,
                   precision: str = "auto") -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) per request, in the order given (`precision`: see inference_precision)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    max_length = max_length or model_window(model)
    inputs = [truncate_for_window(ctx, cont, max_length) for ctx, cont in requests]
    continuations = [list(cont) for _, cont in requests]
    order = sorted(range(len(requests)), key=lambda i: (-len(inputs[i]), i))
    device = model_device(model)
    was_training = model.training
    model.eval()
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    bar = _progress_bar(len(requests), progress)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            with inference_precision(device, precision):
                scores = _score_batch(model, [inputs[i] for i in chunk], [continuations[i] for i in chunk], device)
            for index, score in zip(chunk, scores):
                results[index] = score
            if bar is not None:
                bar.update(len(chunk))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return results  # type: ignore[return-value]


def _score_batch(model: nn.Module, inputs: list[list[int]], continuations: list[list[int]],
                 device: torch.device) -> list[tuple[float, bool]]:
    width = max(len(x) for x in inputs)
    batch = torch.zeros(len(inputs), width, dtype=torch.long)
    rows, positions, targets, owners = [], [], [], []
    for b, (tokens, cont) in enumerate(zip(inputs, continuations)):
        batch[b, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        # position t predicts token t+1: the continuation is predicted by the last len(cont) positions
        first = len(tokens) - len(cont)
        rows += [b] * len(cont)
        positions += range(first, len(tokens))
        targets += cont
        owners += [b] * len(cont)
    batch = batch.to(device)
    rows_t = torch.tensor(rows, device=device)
    positions_t = torch.tensor(positions, device=device)
    targets_t = torch.tensor(targets, dtype=torch.long, device=device)
    logprobs, greedy = _target_logprobs(model, batch, rows_t, positions_t, targets_t)
    owners_t = torch.tensor(owners, device=device)
    sums = torch.zeros(len(inputs), dtype=torch.float64, device=device).index_add_(0, owners_t, logprobs.double())
    misses = torch.zeros(len(inputs), dtype=torch.long, device=device).index_add_(0, owners_t, (~greedy).long())
    sums_and_misses = torch.stack([sums, misses.double()]).tolist()  # one device-to-host copy per batch
    return [(s, m == 0) for s, m in zip(*sums_and_misses)]


# Models whose `.model` turned out not to return hidden states, so their later batches run the model once
_HIDDEN_FROM_BACKBONE: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _target_logprobs(model: nn.Module, batch: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and argmax == target at the selected positions, float32 log-softmax as lm-eval."""
    head, backbone = getattr(model, "lm_head", None), getattr(model, "model", None)
    has_head_layout = isinstance(head, nn.Linear) and callable(backbone) and _HIDDEN_FROM_BACKBONE.get(model, True)
    states = backbone(batch) if has_head_layout else None
    if has_head_layout and not isinstance(states, torch.Tensor):
        _HIDDEN_FROM_BACKBONE[model] = False  # e.g. an HF backbone's output object: `.logits` from now on
    if isinstance(states, torch.Tensor):  # hybridlm's layout: final hidden states, then the LM head
        hidden, weight, bias = states[rows, positions], head.weight, head.bias
    else:  # any model returning `.logits` [B, T, V]
        hidden, weight, bias = model(batch).logits[rows, positions], None, None
    n = hidden.shape[0]
    vocab = weight.shape[0] if weight is not None else hidden.shape[-1]
    step = max(1, HEAD_BUDGET_ELEMENTS // vocab)
    logprobs = torch.empty(n, dtype=torch.float32, device=hidden.device)
    greedy = torch.empty(n, dtype=torch.bool, device=hidden.device)
    for start in range(0, n, step):
        part = hidden[start:start + step]
        with torch.autocast(part.device.type, enabled=False):  # the head in float32 (float64 in tests)
            part = part.to(torch.promote_types(part.dtype, torch.float32))
            logits = F.linear(part, weight.to(part.dtype), None if bias is None else bias.to(part.dtype)) \
                if weight is not None else part
            logp = F.log_softmax(logits, dim=-1)
        wanted = targets[start:start + step]
        logprobs[start:start + step] = logp.gather(1, wanted[:, None])[:, 0]
        greedy[start:start + step] = logp.argmax(dim=-1) == wanted
    return logprobs, greedy


def _progress_bar(total: int, enabled: bool):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scoring", unit="req", leave=False)
