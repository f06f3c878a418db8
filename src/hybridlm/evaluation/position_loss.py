"""Validation loss against token position: does the model use the context it was trained on?

A model that uses long context predicts late tokens better than early ones, so its loss falls with
position; one that forgets (a recurrent state that saturates, a window too short) flattens out. The
windows are the run's own fixed validation windows (the `rows x eval_batches` windows the trainer scores,
`validation_batches`), or `limit` windows spread over the split, of `seq_len` tokens (default the trained
length). Position t is the prediction of token t+1 from tokens 0..t (t = 0 sees one token). A run that
packs documents (data.packing = "documents") is scored as it trained: no layer crosses a document
boundary, and t counts from the start of the token's document (or of the row, for a document that began
in the previous window), so the curve is loss against the context the model actually had.

Bins: "log" gives [0,1), [1,2), [2,4), ... [2^k, seq_len) (each octave of context one point); an integer
N gives fixed-width bins of N positions. A bin's loss is the mean over its (position, window) pairs, so
sum(bin loss x bin tokens) / all tokens is the overall mean loss exactly (bins no target falls in are
left out).

The backbone runs `batch_size` windows at a time and the LM head a chunk of rows at a time in float32, so
no [batch, seq_len, vocab] tensor exists and 64K-token windows fit (the same chunking as training's loss).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from hybridlm.errors import HybridLMError

HEAD_BUDGET = {"cpu": 1 << 25, "cuda": 1 << 28}  # logits elements per head chunk: 128 MB / 1 GB of float32


def position_bins(seq_len: int, bins: str | int = "log") -> list[tuple[int, int]]:
    """[start, end) position ranges covering 0..seq_len-1."""
    if seq_len < 1:
        raise HybridLMError(f"position bins need a positive length, got {seq_len}")
    if isinstance(bins, str) and bins.strip().isdigit():
        bins = int(bins)
    if isinstance(bins, int):
        if bins < 1:
            raise HybridLMError(f"a position bin width must be >= 1, got {bins}")
        return [(s, min(s + bins, seq_len)) for s in range(0, seq_len, bins)]
    if bins != "log":
        raise HybridLMError(f"position bins are 'log' or a width in tokens, got {bins!r}")
    edges = [0] + [2 ** k for k in range(0, math.ceil(math.log2(seq_len)) + 1) if 2 ** k < seq_len] + [seq_len]
    return list(zip(edges[:-1], edges[1:]))


@torch.no_grad()
def per_position_sums(model: nn.Module, windows: torch.Tensor, batch_size: int = 8, precision: str = "auto",
                      eos_id: int | None = None, progress: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, argmax hits, counted targets) per position [T], float64, over `windows` [N, T+1].

    `eos_id` given: the windows are scored as packed documents (data.packing = "documents": no layer
    crosses an eos, the target after an eos is skipped) and a position is counted from the start of its
    document (or of the row, for a document continued from the previous window)."""
    from hybridlm.evaluation.scoring import inference_precision, model_device

    if windows.ndim != 2 or windows.shape[1] < 2:
        raise HybridLMError("position loss needs windows of shape [count, seq_len + 1]")
    device = model_device(model)
    length = windows.shape[1] - 1
    sums = torch.zeros(3, length, dtype=torch.float64, device=device)  # loss, hits, targets
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=windows.shape[0], desc="position loss", unit="window", leave=False)
    try:
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start:start + batch_size].to(device)
            inputs, targets, positions, varlen = _scored_batch(batch, eos_id)
            with inference_precision(device, precision):
                hidden = model.model(inputs, **varlen)
            _accumulate(sums, hidden.reshape(-1, hidden.shape[-1]), model.lm_head.weight, targets.reshape(-1),
                        positions.reshape(-1))
            if bar is not None:
                bar.update(batch.shape[0])
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return sums[0], sums[1], sums[2]


def _scored_batch(batch: torch.Tensor, eos_id: int | None):
    """(inputs, targets, position of each target, extra forward arguments) of [B, T + 1] windows."""
    rows, length = batch.shape[0], batch.shape[1] - 1
    if eos_id is None:
        positions = torch.arange(length, device=batch.device).expand(rows, length)
        return batch[:, :-1], batch[:, 1:], positions, {}
    from hybridlm.data.packing import pack_documents

    packed = pack_documents(batch, eos_id)
    flat = torch.arange(rows * length, device=batch.device)
    starts = packed.cu_seqlens.to(device=batch.device, dtype=torch.long)
    segment = torch.searchsorted(starts[1:], flat, right=True)
    return packed.inputs, packed.labels, flat - starts[segment], {"cu_seqlens": packed.cu_seqlens}


def _accumulate(sums: torch.Tensor, hidden: torch.Tensor, head: torch.Tensor, targets: torch.Tensor,
                positions: torch.Tensor) -> None:
    """Add each target's loss and hit at its position; -100 targets are skipped."""
    from hybridlm.ops.cross_entropy import IGNORE_INDEX

    step = max(1, HEAD_BUDGET.get(hidden.device.type, HEAD_BUDGET["cpu"]) // head.shape[0])
    for first in range(0, hidden.shape[0], step):
        wanted, where = targets[first:first + step], positions[first:first + step]
        valid = wanted != IGNORE_INDEX
        safe = torch.where(valid, wanted, torch.zeros_like(wanted))
        with torch.autocast(hidden.device.type, enabled=False):
            part = hidden[first:first + step]
            part = part.to(torch.promote_types(part.dtype, torch.float32))
            logits = part @ head.to(part.dtype).t()
            nll = torch.logsumexp(logits, -1) - logits.gather(1, safe[:, None])[:, 0]
        keep = valid.double()
        sums[0].index_add_(0, where, nll.double() * keep)
        sums[1].index_add_(0, where, (logits.argmax(-1) == safe).double() * keep)
        sums[2].index_add_(0, where, keep)


def bin_losses(loss_sums: torch.Tensor, hit_sums: torch.Tensor, counts: torch.Tensor,
               bins: list[tuple[int, int]]) -> list[dict]:
    """One record per bin: its positions, targets counted, mean loss and next-token accuracy (None for a bin
    no target falls in, e.g. late positions when every packed document is shorter)."""
    out = []
    for start, end in bins:
        tokens = int(counts[start:end].sum())
        out.append({"start": start, "end": end, "tokens": tokens,
                    "loss": float(loss_sums[start:end].sum()) / tokens if tokens else None,
                    "acc": float(hit_sums[start:end].sum()) / tokens if tokens else None})
    return out


def run_windows(run_dir: str | Path, seq_len: int | None = None, limit: int | None = None,
                checkpoint: Path | None = None, progress: bool = False) -> tuple[torch.Tensor, int | None, str]:
    """The run's validation windows [N, seq_len + 1], the eos id when the run packs documents (else None)
    and a description of where the windows come from.

    Default: the fixed validation set its trainer scores (rows per batch as recorded in the checkpoint,
    x train.eval_batches); `limit` instead spreads that many windows over the split; `seq_len` other
    than the trained one cuts windows of that length."""
    import warnings

    from hybridlm.data import prepare_data, validation_batches
    from hybridlm.runs import RunDir, load_run_config

    config = load_run_config(RunDir(run_dir))
    length = seq_len or config.data.seq_len
    if limit is not None:
        count, what = limit, f"{limit} windows spread over the split"
    else:
        rows = _validation_rows(config, checkpoint)
        count = rows * config.train.eval_batches
        what = f"the run's fixed validation windows ({rows} x {config.train.eval_batches} batches)"
    data = prepare_data(config.data, progress=progress)
    available = (len(data.val_tokens) - 1) // length if len(data.val_tokens) > length else 0
    if available < 1:
        raise HybridLMError(f"the validation split of {run_dir} ({len(data.val_tokens)} tokens) is shorter than one "
                            f"window of {length + 1} tokens; lower --max-length or use a larger split")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short split reuses windows, as training does; said in `source`
        (windows,) = validation_batches(data.val_tokens, count, length, num_batches=1)
    reused = " (windows reused: the split is short)" if available < count else ""
    packing = getattr(config.data, "packing", "stream")
    eos_id = data.tokenizer.eos_id if packing == "documents" else None
    return windows, eos_id, f"run data: {config.data.source}, {what}, seq_len {length}, packing {packing}{reused}"


def _validation_rows(config, checkpoint: Path | None) -> int:
    if checkpoint is not None:
        from hybridlm.errors import CheckpointError
        from hybridlm.runs.checkpoint import read_trainer_state
        from hybridlm.train.global_batch import recorded_validation_rows

        try:
            return recorded_validation_rows(read_trainer_state(checkpoint), config)
        except CheckpointError:
            pass
    return config.train.batch_size


def position_loss(model: nn.Module, run_dir: str | Path, bins: str | int = "log", seq_len: int | None = None,
                  limit: int | None = None, batch_size: int = 8, precision: str = "auto",
                  checkpoint: Path | None = None, progress: bool = False) -> dict:
    """The eval.json entry of the position_loss task."""
    windows, eos_id, source = run_windows(run_dir, seq_len, limit, checkpoint, progress)
    length = windows.shape[1] - 1
    loss_sums, hit_sums, counts = per_position_sums(model, windows, batch_size, precision, eos_id, progress)
    records = [b for b in bin_losses(loss_sums, hit_sums, counts, position_bins(length, bins)) if b["tokens"]]
    total = int(counts.sum())
    mean_loss = float(loss_sums.sum()) / total
    return {"metrics": {"loss": mean_loss, "loss_first_bin": records[0]["loss"], "loss_last_bin": records[-1]["loss"],
                        "acc": float(hit_sums.sum()) / total},
            "stderr": {"loss": None, "loss_first_bin": None, "loss_last_bin": None, "acc": None},
            "count": int(windows.shape[0]), "tokens": total, "split": "validation", "source": source,
            "seq_len": length, "position": "in the window" if eos_id is None else "in the document",
            "bins_spec": str(bins), "bins": records}
