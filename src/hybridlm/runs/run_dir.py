"""The run directory: the one on-disk format that train, sweep, compare, eval and generate share.

    DIR/config.toml          resolved config
    DIR/tokenizer/           the tokenizer, so any checkpoint can be decoded
    DIR/metrics.jsonl        one JSON object per train-log / eval event
    DIR/results.json         summary (model, results, environment)
    DIR/training_curves.png  loss, val loss, val accuracy, val perplexity
    DIR/checkpoints/{best,final,step_NNNNNN}/
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hybridlm.atomic_write import write_json_atomic, write_text_atomic
from hybridlm.errors import CheckpointError, HybridLMError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CURVES_FILE = "training_curves.png"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
STEP_PATTERN = re.compile(r"^step_(\d{6,})$")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ------------------------------------------------------------- locations
    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def results_file(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def curves_file(self) -> Path:
        return self.path / CURVES_FILE

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / TOKENIZER_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    @staticmethod
    def step_name(step: int) -> str:
        return f"step_{step:06d}"

    # --------------------------------------------------------------- creation
    def prepare(self) -> None:
        """Create the directory, failing early (before training) if it cannot be written."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise HybridLMError(f"cannot write to output directory {self.path} ({exc.strerror}); "
                                "choose another --out") from None

    def is_run(self) -> bool:
        return self.config_file.is_file()

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        records = []
        for line in self.metrics_file.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
        return records

    def truncate_metrics(self, after_step: int) -> None:
        """Drop events past `after_step` (resuming from an earlier checkpoint replays them)."""
        kept = [r for r in self.read_metrics() if r.get("step", 0) <= after_step]
        write_text_atomic(self.metrics_file, "".join(json.dumps(r) + "\n" for r in kept))

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_file, results)

    def read_results(self) -> dict[str, Any] | None:
        if not self.results_file.is_file():
            return None
        return json.loads(self.results_file.read_text())

    # ------------------------------------------------------------ checkpoints
    def recover_interrupted_saves(self) -> None:
        """A crash between the two renames of a checkpoint swap leaves only `.old-NAME`: put it back."""
        if not self.checkpoints.is_dir():
            return
        for old in self.checkpoints.glob(".old-*"):
            target = old.with_name(old.name[len(".old-"):])
            if not target.exists():
                old.rename(target)

    def step_checkpoints(self) -> list[tuple[int, Path]]:
        self.recover_interrupted_saves()
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            match = STEP_PATTERN.match(child.name)
            if match and child.is_dir():
                found.append((int(match.group(1)), child))
        return sorted(found)

    def latest_resumable(self) -> Path | None:
        """The checkpoint with optimizer state at the highest step (periodic or final)."""
        from hybridlm.runs.checkpoint import OPTIMIZER_TENSORS, read_trainer_state

        candidates = [path for _, path in self.step_checkpoints()]
        final = self.checkpoint("final")
        if final.is_dir():
            candidates.append(final)
        best_step, best_path = -1, None
        for path in candidates:
            if not (path / OPTIMIZER_TENSORS).is_file():
                continue
            try:
                step = int(read_trainer_state(path)["step"])
            except (CheckpointError, KeyError, ValueError):
                continue
            if step > best_step:
                best_step, best_path = step, path
        return best_path

    def resolve_checkpoint(self, which: str = "best") -> Path:
        """'best', 'final', 'latest', a checkpoint name, or a path."""
        if which == "latest":
            latest = self.latest_resumable()
            if latest is None:
                raise CheckpointError(f"{self.path} has no resumable checkpoint")
            return latest
        self.recover_interrupted_saves()
        candidate = Path(which)
        if candidate.is_dir() and (candidate / "model.safetensors").is_file():
            return candidate
        path = self.checkpoint(which)
        if path.is_dir():
            return path
        if which == "best" and self.checkpoint("final").is_dir():
            return self.checkpoint("final")
        available = sorted(p.name for p in self.checkpoints.iterdir()) if self.checkpoints.is_dir() else []
        raise CheckpointError(f"checkpoint {which!r} not found in {self.checkpoints}; "
                              f"available: {', '.join(available) or 'none'}")

    def prune_step_checkpoints(self, keep: int) -> None:
        import shutil

        for _, path in self.step_checkpoints()[:-keep] if keep > 0 else []:
            shutil.rmtree(path, ignore_errors=True)


def find_run_dir(path: str | Path) -> tuple[RunDir, Path | None]:
    """Accept a run directory or a checkpoint inside one; return (run, checkpoint or None)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; pass a run directory or a checkpoint in one")
    if (path / CONFIG_FILE).is_file():
        return RunDir(path), None
    if path.parent.name == CHECKPOINTS_DIR and (path.parent.parent / CONFIG_FILE).is_file():
        return RunDir(path.parent.parent), path
    raise CheckpointError(f"{path} is neither a run directory (no {CONFIG_FILE}) nor a checkpoint of one")
