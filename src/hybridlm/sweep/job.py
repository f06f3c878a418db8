"""One sweep member as a job of the slot queue: its training process, then optionally its evaluation.

Each phase is its own process (`python -m hybridlm.sweep.member ... train|eval ...`), so a crash,
an out-of-memory kill or a Ctrl-C stays with this member: the outcome is written onto the member
(status done / failed / interrupted, the error message, the return code) for sweep.json.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from hybridlm.config import RESUME_SAFE_KEYS, Config, changed_keys
from hybridlm.errors import HybridLMError, RunLockedError
from hybridlm.runs import RunDir, load_run_config
from hybridlm.runs.writer import LOCK_FILE, RUN_ARTIFACTS, RunLock
from hybridlm.sweep.devices import Slot
from hybridlm.sweep.estimate import clock
from hybridlm.sweep.plan import Member
from hybridlm.sweep.state import disk_state, load_planned_config, now, planned_config_problem

if TYPE_CHECKING:  # pragma: no cover
    from hybridlm.sweep.runner import SweepContext

INTERRUPTED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)
INTERRUPT_GRACE_S = 5.0
# what a failed attempt may leave in a member directory (anything else is not ours to delete)
LEFTOVERS = {"train.log", "train_error.txt", "eval.log", "eval_error.txt", LOCK_FILE, *RUN_ARTIFACTS}
# where a member's own config.toml may differ from its planned file: filled in by training (the
# tokenizer's vocab size, the FLA clone in use), or settings that never change the experiment
FILLED_IN_OR_SAFE = {"model.vocab_size", *RESUME_SAFE_KEYS}
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class MemberJob:
    """One member's processes: training (fresh or resumed), then optionally evaluation."""

    def __init__(self, ctx: SweepContext, member: Member):
        self.ctx = ctx
        self.member = member
        self.name = member.name
        self.dir = ctx.plan.member_dir(member)
        self.proc: subprocess.Popen | None = None
        self.phase = "train"
        self.slot: Slot | None = None
        self.t0 = 0.0
        self.expected_s = 0.0
        self._log = None

    # ------------------------------------------------------------------ phases
    def start(self, slot: Slot) -> None:
        self.slot, self.t0 = slot, time.perf_counter()
        m = self.member
        state = disk_state(self.dir, m.steps)
        m.device = slot.device
        if state.action == "done":
            self.phase = "eval"
            self._launch(self._eval_args(), verb="evaluate")
            return
        if state.action == "resume":
            m.resumed_from_step = state.step
            args = ["train", "--resume", str(self.dir), *m.fla_args()]
            verb, detail = "resume", f" from step {state.step}"
        else:
            m.resumed_from_step, m.wall_s = None, None
            problem = planned_config_problem(self.ctx.plan, m)
            if problem is None and self.dir.exists():  # a failed attempt without a checkpoint: start clean
                problem = self._clear_failed_attempt()
            if problem is not None:
                self.proc = None
                self._record_failure(problem)
                return
            args = self.ctx.plan.train_args(m)  # train --config DIR/configs/NAME.toml --out DIR/NAME
            verb, detail = "start", ""
        fraction_left = 1.0 - state.step / max(m.steps or 1, 1)
        self.expected_s = self.ctx.estimator.seconds(self.ctx.flops_of(m), m.tokens or 0) * fraction_left
        m.attempts += 1
        m.status, m.error, m.returncode, m.started, m.finished = "running", None, None, now(), None
        self._launch(args + self._progress_args(), verb=verb, detail=detail)

    def poll(self) -> bool:
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            return False
        return self._finished(self.proc.returncode)

    def interrupt(self) -> None:
        self._interrupted_at = time.monotonic()  # and no eval phase starts from now on

    def wait_stopped(self, timeout: float) -> None:
        """Give the member the Ctrl-C it shares with us; forward one if it did not get it; kill last.

        A member that got SIGINT saves a checkpoint and exits 130. A second SIGINT during that save
        would cost the checkpoint, so ours only goes out after a grace period, to a member still running."""
        if self.proc is None:
            return
        started = getattr(self, "_interrupted_at", time.monotonic())
        grace_left = INTERRUPT_GRACE_S - (time.monotonic() - started)
        if self.ctx.forward_interrupt and not _exits_within(self.proc, grace_left):
            self.proc.send_signal(signal.SIGINT)
        if not _exits_within(self.proc, timeout):
            self.proc.kill()
            self.proc.wait()
        self._finished(self.proc.returncode)

    def remaining_s(self) -> float:
        return max(self.expected_s - (time.perf_counter() - self.t0), 0.0)

    # ----------------------------------------------------------------- helpers
    def _launch(self, args: list[str], verb: str, detail: str = "") -> None:
        error_file = self._error_file()
        error_file.unlink(missing_ok=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.ctx.options.python, "-m", "hybridlm.sweep.member", "--error-file", str(error_file), *args]
        env = {**os.environ, **self.slot.env}
        # the member must import this very hybridlm, also when it runs from a source checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        out = None
        where = ""
        if self.ctx.parallel:  # members share the terminal badly: each writes its own log
            log_path = self.dir / f"{self.phase}.log"
            self._log = open(log_path, "a")
            out = self._log
            where = f", log {log_path}"
        self.ctx.view.message(f"{verb} {self.name}{detail} on {self.slot.device}{where}")
        try:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None)
        except OSError as exc:
            self.proc = None
            if self.phase == "eval":
                self.member.eval_status, self.member.eval_error = "failed", f"could not start: {exc}"
            else:
                self._record_failure(f"could not start: {exc}")
            return
        self.member.pid = self.proc.pid

    def _finished(self, returncode: int) -> bool:
        """Record a process's end; returns True when the job is over (False: the eval phase started)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        m = self.member
        m.pid = None
        if self.phase == "eval":
            m.eval_tasks = self.ctx.options.eval_tasks
            m.eval_status = "done" if returncode == 0 else "failed"
            m.eval_error = None if returncode == 0 else self._error_message(returncode)
            if m.eval_error:
                self.ctx.view.message(f"eval of {self.name} failed: {m.eval_error}")
            return True
        wall = time.perf_counter() - self.t0
        m.returncode, m.finished, m.wall_s = returncode, now(), round((m.wall_s or 0.0) + wall, 3)
        state = disk_state(self.dir, m.steps)
        if returncode == 0 and state.action == "done":
            m.status, m.error = "done", None
            trained = (m.tokens or 0) * (1 - (m.resumed_from_step or 0) / (m.steps or 1))
            self.ctx.estimator.add(self.ctx.flops_of(m), int(trained), wall)
            self.ctx.view.message(f"done {self.name}: {_result_line(self.dir)} in {clock(wall)}")
            if self.ctx.needs_eval(m) and not hasattr(self, "_interrupted_at"):
                self.phase = "eval"
                self.ctx.save()
                self._launch(self._eval_args(), verb="evaluate")
                return self.proc is None
            return True
        if returncode in INTERRUPTED_CODES:
            m.status = "interrupted"
            m.error = f"interrupted at step {state.step}" if state.action == "resume" else "interrupted"
            self.ctx.view.message(f"interrupted {self.name} ({m.error}); rerun the sweep to resume it")
            return True
        self._record_failure(self._error_message(returncode) if returncode != 0
                             else f"finished without the planned {m.steps} steps")
        return True

    def _clear_failed_attempt(self) -> str | None:
        """Delete what an earlier attempt of this member left (no checkpoint to resume from).

        Only a directory holding nothing but the sweep's logs and a run of this member's planned config
        is deleted, and only while no process writes it; otherwise the reason is returned."""
        try:
            config = load_planned_config(self.ctx.plan, self.member)
        except HybridLMError as exc:
            return f"{self.ctx.plan.config_path(self.member)}: {exc}"
        if not _is_member_leftover(self.dir, config):
            return f"{self.dir} exists and is not a run of this sweep; move it away"
        try:
            with RunLock(self.dir):
                shutil.rmtree(self.dir)
        except RunLockedError as exc:
            return str(exc)
        return None

    def _record_failure(self, message: str) -> None:
        self.member.status, self.member.error = "failed", message
        self.ctx.view.message(f"FAILED {self.name}: {message}")

    def _error_file(self) -> Path:
        return self.dir / f"{self.phase}_error.txt"

    def _error_message(self, returncode: int) -> str:
        path = self._error_file()
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip()
        if returncode < 0:
            try:
                name = signal.Signals(-returncode).name
            except ValueError:
                name = f"signal {-returncode}"
            hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return f"exited with code {returncode}"

    def _progress_args(self) -> list[str]:
        progress = False if self.ctx.parallel else self.ctx.options.progress
        return [] if progress is None else (["--progress"] if progress else ["--no-progress"])

    def _eval_args(self) -> list[str]:
        o = self.ctx.options
        args = ["eval", "--run", str(self.dir), "--tasks", o.eval_tasks or ""]
        if o.eval_limit is not None:
            args += ["--limit", str(o.eval_limit)]
        if o.eval_data_dir:
            args += ["--data-dir", o.eval_data_dir]
        return args + self._progress_args()


def _is_member_leftover(path: Path, config: Config) -> bool:
    """Only what this member's attempts leave may be deleted for a fresh start: the sweep's logs and the
    files of a training run whose config.toml is this member's planned `config` (another one is not ours)."""
    for entry in path.iterdir():
        if entry.name not in LEFTOVERS and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            return False
    run = RunDir(path)
    if not run.config_file.exists():
        return True
    try:
        saved = load_run_config(run)
    except HybridLMError:
        return False
    return all(key in FILLED_IN_OR_SAFE for key in changed_keys(config, saved))


def _exits_within(proc: subprocess.Popen, seconds: float) -> bool:
    try:
        proc.wait(timeout=max(seconds, 0.01))
        return True
    except subprocess.TimeoutExpired:
        return False


def _result_line(run_dir: Path) -> str:
    results = (RunDir(run_dir).read_results() or {}).get("results", {})
    best = results.get("best_val_loss")
    return f"best val loss {best:.4f}" if best is not None else "no validation loss"
