"""Claiming a run directory for writing: one writer at a time, and never replacing a run by accident.

Training takes an exclusive lock on `DIR/.lock` (`fcntl.flock`, released by the OS when the
process dies, so a crash never leaves a stale lock). Readers (eval, generate, compare) never
take it. A directory that already holds a run is only replaced with `overwrite=True`, and then
completely, so no checkpoint, metric or plot of the old run survives to mix with the new one.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from hybridlm.errors import HybridLMError, RunLockedError

LOCK_FILE = ".lock"
# everything a training run writes into its directory (eval.json: `hybridlm eval`)
RUN_ARTIFACTS = ("config.toml", "tokenizer", "metrics.jsonl", "results.json", "training_curves.png",
                 "checkpoints", "tensorboard", "wandb", "eval.json", ".write-test")


class RunLock:
    """`with RunLock(dir):` holds the directory's writer lock, or fails at once naming the holder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no advisory locks; run unguarded
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise HybridLMError(f"cannot write to output directory {self.path} ({exc.strerror}); "
                                "choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLockedError(f"{self.path} is being written by {holder}; wait for it to finish or train "
                                 "into another --out (eval, generate and compare may read it meanwhile)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def holds_run(path: str | Path) -> bool:
    """True when training output is there: a config, metrics, results or any checkpoint."""
    path = Path(path)
    if not path.is_dir():
        return False
    checkpoints = path / "checkpoints"
    return any((path / name).exists() for name in ("config.toml", "metrics.jsonl", "results.json")) or (
        checkpoints.is_dir() and any(checkpoints.iterdir()))


def describe_run(path: str | Path) -> str:
    """'60 steps, val loss 5.54' (from results.json), else what the checkpoints say."""
    import json

    path = Path(path)
    try:
        results = json.loads((path / "results.json").read_text()).get("results", {})
        steps, loss = results.get("steps"), results.get("best_val_loss")
        if steps is not None:
            return f"{steps} steps" + (f", val loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
    except (OSError, ValueError, AttributeError):
        pass
    steps = []
    for state in (path / "checkpoints").glob("*/trainer_state.json"):
        try:
            steps.append(int(json.loads(state.read_text())["step"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return f"unfinished, checkpoints up to step {max(steps)}" if steps else "unfinished, no checkpoint"


def clear_run(path: str | Path) -> None:
    """Remove every file a training run writes (the lock file stays: its holder is us)."""
    path = Path(path)
    for name in RUN_ARTIFACTS:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for leftover in path.glob(".*.tmp"):  # an atomic write cut short
        leftover.unlink()
