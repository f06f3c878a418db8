"""Optional experiment trackers (TensorBoard, Weights & Biases) fed the same records as metrics.jsonl."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from hybridlm.config import Config

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "val_loss", "val_accuracy", "val_perplexity")


def open_trackers(config: Config, run_path: Path) -> tuple[list[Callable[[dict], None]], list[Callable[[], None]]]:
    writers: list[Callable[[dict], None]] = []
    closers: list[Callable[[], None]] = []
    if config.train.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn("train.tensorboard is on but tensorboard is not installed (pip install tensorboard)",
                          stacklevel=2)
        else:
            tb = SummaryWriter(str(run_path / "tensorboard"))

            def write_tb(record: dict) -> None:
                for key in SCALARS:
                    if record.get(key) is not None:
                        tb.add_scalar(f"{record['event']}/{key}", record[key], record["step"])

            writers.append(write_tb)
            closers.append(tb.close)
    if config.train.wandb_project:
        try:
            import wandb
        except ImportError:
            warnings.warn("train.wandb_project is set but wandb is not installed (pip install wandb)", stacklevel=2)
        else:
            wb = wandb.init(project=config.train.wandb_project, name=config.run.name or run_path.name,
                            config=config.to_dict(), dir=str(run_path))
            writers.append(lambda r: wb.log({k: r[k] for k in SCALARS if r.get(k) is not None}, step=r["step"]))
            closers.append(wb.finish)
    return writers, closers
