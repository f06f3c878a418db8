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
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable

from hybridlm.atomic_write import dumps_strict, write_json_atomic, write_text_atomic
from hybridlm.errors import CheckpointError, HybridLMError

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
CURVES_FILE = "training_curves.png"
TOKENIZER_DIR = "tokenizer"
CHECKPOINTS_DIR = "checkpoints"
STEP_PATTERN = re.compile(r"^step_(\d{6,})$")


class CorruptCheckpointWarning(UserWarning):
    """A newer checkpoint failed verification and an older one is used instead."""


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        # (checkpoint, reason) of each newer checkpoint the last latest_resumable() call passed over
        self.skipped: list[tuple[Path, str]] = []

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
        """Append one event as a line of strict JSON (NaN / inf become null)."""
        line = dumps_strict(record) + "\n"
        with self.metrics_file.open("a") as f:
            f.write(line)

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
        write_text_atomic(self.metrics_file, "".join(dumps_strict(r) + "\n" for r in kept))

    def write_results(self, results: dict[str, Any]) -> None:
        write_json_atomic(self.results_file, results)

    def read_results(self) -> dict[str, Any] | None:
        """results.json's content, None before it exists; CheckpointError naming the file when it is garbage."""
        file = self.results_file
        if not file.is_file():
            return None
        try:
            data = json.loads(file.read_bytes())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                  "the checkpoints are unaffected") from None
        except ValueError as exc:  # not UTF-8
            raise CheckpointError(f"{file} is not valid JSON ({exc}); the checkpoints are unaffected") from None
        except OSError as exc:
            raise CheckpointError(f"{file} cannot be read ({exc.strerror or exc})") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{file} is not valid results JSON (not an object); the checkpoints are unaffected")
        return data

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

    def latest_resumable(self, on_skip: Callable[[Path, str], Any] | None = None, *,
                         verify: bool = True) -> Path | None:
        """The newest checkpoint (highest step in trainer_state.json, periodic or final) that can be resumed:
        it holds optimizer state, passes `verify_checkpoint` and its trainer_state.json parses.

        Each newer checkpoint passed over is reported as `on_skip(path, reason)` (default: a
        CorruptCheckpointWarning) and kept in `self.skipped`. None when no checkpoint is good (the caller
        raises; `self.skipped` says why). `verify=False` checks file sizes against the manifest but hashes
        nothing (for quick polling, e.g. a sweep deciding what to resume).
        """
        chosen, skipped = self._newest_resumable(verify)
        self.skipped = skipped
        for bad, reason in skipped:
            if on_skip is not None:
                on_skip(bad, reason)
            else:
                then = f"resuming from {chosen} instead" if chosen else "no older checkpoint is intact"
                warnings.warn(f"checkpoint {bad} is corrupt ({reason}); {then}", CorruptCheckpointWarning,
                              stacklevel=2)
        return chosen

    def resumable_problem(self, path: Path, verify: bool = True) -> str | None:
        """Why checkpoint `path` cannot be resumed from (one line, files named relative to it), or None."""
        from hybridlm.runs.checkpoint import (OPTIMIZER_META, OPTIMIZER_TENSORS, CheckpointFileError,
                                              read_trainer_state, verify_checkpoint)

        try:
            verify_checkpoint(path, hash=False)  # cheap checks first: every listed file there, at its size
            for name in (OPTIMIZER_TENSORS, OPTIMIZER_META):
                if not (path / name).is_file():
                    return f"it holds no optimizer state (no {name})"
            step = read_trainer_state(path).get("step")
            if isinstance(step, bool) or not isinstance(step, int):
                return f"trainer_state.json has no integer step (found {step!r})"
            if verify:
                verify_checkpoint(path)
        except CheckpointFileError as exc:
            return exc.reason
        except CheckpointError as exc:
            return str(exc)
        return None

    def _newest_resumable(self, verify: bool) -> tuple[Path | None, list[tuple[Path, str]]]:
        from hybridlm.runs.checkpoint import read_trainer_state

        ordered = []
        candidates = [(step, path) for step, path in self.step_checkpoints()]
        final = self.checkpoint("final")
        if final.is_dir():
            candidates.append((math.inf, final))
        for named_step, path in candidates:
            try:  # order by the step recorded inside; by the name when that cannot be read
                step = read_trainer_state(path).get("step", named_step)
                step = step if isinstance(step, int) and not isinstance(step, bool) else named_step
            except CheckpointError:
                step = named_step
            ordered.append((step, path.name == "final", path))
        # newest first; on equal steps a periodic checkpoint before final (as before)
        ordered.sort(key=lambda item: (-item[0], item[1]))
        skipped = []
        for _, _, path in ordered:
            reason = self.resumable_problem(path, verify)
            if reason is None:
                return path, skipped
            skipped.append((path, reason))
        return None, skipped

    def resolve_checkpoint(self, which: str = "best", *, on_skip: Callable[[Path, str], Any] | None = None,
                           verify: bool = True) -> Path:
        """'best', 'final', 'latest', a checkpoint name, or a path.

        'latest' falls back past corrupt checkpoints (see `latest_resumable`); a checkpoint named explicitly
        is verified against its manifest and a corrupt one is a CheckpointError naming the bad file.
        """
        if which == "latest":
            latest = self.latest_resumable(on_skip=on_skip, verify=verify)
            if latest is None:
                why = "; ".join(f"{path.name}: {reason}" for path, reason in self.skipped)
                raise CheckpointError(f"{self.path} has no resumable checkpoint"
                                      + (f" (all are damaged: {why})" if why else ""))
            return latest
        path = self._locate(which)
        if verify:
            from hybridlm.runs.checkpoint import verify_checkpoint

            verify_checkpoint(path)
        return path

    def _locate(self, which: str) -> Path:
        self.recover_interrupted_saves()
        candidate = Path(which)
        if candidate.is_dir() and (candidate / "model.safetensors").is_file():
            return candidate
        path = self.checkpoint(which)
        if path.is_dir():
            return path
        if which == "best" and self.checkpoint("final").is_dir():
            return self.checkpoint("final")
        available = sorted(p.name for p in self.checkpoints.iterdir() if not p.name.startswith(".")) \
            if self.checkpoints.is_dir() else []
        raise CheckpointError(f"checkpoint {which!r} not found in {self.checkpoints}; "
                              f"available: {', '.join(available) or 'none'}")

    def prune_step_checkpoints(self, keep: int, *, verify: bool = True) -> None:
        """Delete all but the newest `keep` step_NNNNNN checkpoints, never the newest resumable one: when
        the newest `keep` are all corrupt, the newest good one older than them stays as well."""
        import shutil

        if keep <= 0:
            return
        doomed = self.step_checkpoints()[:-keep]
        if not doomed:
            return
        protected, _ = self._newest_resumable(verify)
        for _, path in doomed:
            if path != protected:
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
