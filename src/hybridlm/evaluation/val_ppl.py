"""`val_ppl`: perplexity of the run's own validation split, on the windows the trainer would cut.

The run's data settings (source, tokenizer, split seed, seq_len) rebuild the same validation
tokens (from the token cache when present); `validation_batches` spreads `limit` windows (default:
every window of the split) evenly over it. One window predicts seq_len tokens, so the result is
comparable to the training log's val loss, only over more (or all) of the split.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from hybridlm.errors import HybridLMError


@torch.no_grad()
def validation_perplexity(model: nn.Module, run_dir: str | Path, batch_size: int = 16, limit: int | None = None,
                          progress: bool = False, precision: str = "auto") -> dict:
    from hybridlm.data import prepare_data, validation_batches
    from hybridlm.evaluation.scoring import inference_precision, model_device
    from hybridlm.ops.cross_entropy import linear_cross_entropy_stats
    from hybridlm.runs import RunDir, load_run_config

    config = load_run_config(RunDir(run_dir))
    seq_len = config.data.seq_len
    data = prepare_data(config.data, progress=progress)
    available = (len(data.val_tokens) - 1) // seq_len if len(data.val_tokens) > seq_len else 0
    if available < 1:
        raise HybridLMError(f"the validation split of {run_dir} is shorter than one window of {seq_len + 1} tokens")
    windows = min(limit, available) if limit else available
    (all_windows,) = validation_batches(data.val_tokens, windows, seq_len, num_batches=1)
    device = model_device(model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, hits, tokens: synced once at the end
    try:
        for start in range(0, windows, batch_size):
            batch = all_windows[start:start + batch_size].to(device)
            with inference_precision(device, precision):
                hidden = model.model(batch[:, :-1])
            hidden = hidden.to(torch.promote_types(hidden.dtype, torch.float32))  # head + softmax in float32
            batch_loss, batch_hits, batch_count = linear_cross_entropy_stats(hidden, model.lm_head.weight, batch[:, 1:])
            totals += torch.stack([batch_loss.double(), batch_hits.double(), batch_count.double()])
    finally:
        model.train(was_training)
    loss_sum, hits, count = totals.tolist()
    hits, count = int(hits), int(count)
    loss = loss_sum / count
    return {
        "metrics": {"perplexity": math.exp(loss), "loss": loss, "acc": hits / count},
        "stderr": {"perplexity": None, "loss": None, "acc": None},
        "count": windows, "tokens": count, "split": "validation",
        "source": f"run data: {config.data.source} (seq_len {seq_len}, {available} windows in the split)",
    }
