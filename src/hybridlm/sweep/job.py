"""One sweep member as a job of the slot queue: its training command, then optionally its evaluation.

Both run in the slot's process (`processes`): a warm worker, or torchrun for a K-process member. The
outcome is written onto the member for sweep.json: status done / failed / interrupted, the error
message, the exit code, and the attempt's timing (wall time, the trainer's own training time, and
the overhead between them: start, imports, data, model build, final evaluation and checkpoint).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from hybridlm.errors import HybridLMError, RunLockedError
from hybridlm.runs.writer import RunLock
from hybridlm.sweep.configs import is_member_leftover, load_planned_config, planned_config_problem
from hybridlm.sweep.devices import Slot
from hybridlm.sweep.estimate import TimeEstimator, clock, flops_per_token
from hybridlm.sweep.processes import Reply
from hybridlm.sweep.progress import SweepProgress
from hybridlm.sweep.records import DiskState, disk_state, member_results
from hybridlm.sweep.state import Member, SweepPlan, now, write_sweep

INTERRUPTED_CODES = (130, 143, -signal.SIGINT, -signal.SIGTERM)
INTERRUPT_GRACE_S = 5.0


@dataclass
class RunOptions:
    devices: str | None = "auto"
    progress: bool | None = None
    eval_tasks: str | None = None
    eval_limit: int | None = None
    eval_data_dir: str | None = None
    member_checkpoints: str = "all"            # what a finished member keeps: all | best | none
    python: str = sys.executable
    poll_interval: float = 0.2


class SweepContext:
    """What the member jobs share: the plan, the options, the slots' processes, the view, the time estimator."""

    def __init__(self, plan: SweepPlan, options: RunOptions, slots: list[Slot], command: list[str] | None):
        self.plan = plan
        self.options = options
        self.slots = slots
        self.command = command
        self.parallel = len(slots) > 1
        self.view = SweepProgress(enabled=options.progress, live=self.parallel)
        self.estimator = TimeEstimator(slots[0].device)
        self.processes: dict[int, Any] = {}        # slot index -> WarmWorker | TorchrunProcess
        self.forward_interrupt = True
        self._flops: dict[str, float] = {}

    def flops_of(self, member: Member) -> float:
        if member.name not in self._flops:
            self._flops[member.name] = flops_per_token(member.build_config())
        return self._flops[member.name]

    def save(self) -> None:
        write_sweep(self.plan, self.command)

    def needs_eval(self, member: Member) -> bool:
        tasks = self.options.eval_tasks
        return bool(tasks) and not (member.eval_status == "done" and member.eval_tasks == tasks)


class MemberJob:
    """One member's commands: training (fresh or resumed), then optionally evaluation."""

    def __init__(self, ctx: SweepContext, member: Member):
        self.ctx = ctx
        self.member = member
        self.name = member.name
        self.dir = ctx.plan.member_dir(member)
        self.process = None
        self.running = False
        self.phase = "train"
        self.slot: Slot | None = None
        self.t0 = 0.0
        self.expected_s = 0.0
        self.start_state = DiskState("fresh")
        self.interrupted_at: float | None = None   # set by `interrupt`: no eval phase starts from then on

    # ------------------------------------------------------------------ phases
    def start(self, slot: Slot) -> None:
        self.slot, self.t0 = slot, time.perf_counter()
        self.process = self.ctx.processes[slot.index]
        m = self.member
        state = self.start_state = disk_state(self.dir, m.steps)
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
        if not self.running:
            return True
        reply = self.process.poll()
        return False if reply is None else self._finished(reply)

    def interrupt(self) -> None:
        self.interrupted_at = time.monotonic()

    def wait_stopped(self, timeout: float) -> None:
        """Give the member the Ctrl-C it shares with us; forward one if it did not get it; kill last.

        A member that got SIGINT saves a checkpoint and exits 130. A second SIGINT during that save
        would cost the checkpoint, so ours only goes out after a grace period, to a member still running."""
        if not self.running:
            return
        grace_left = INTERRUPT_GRACE_S - (time.monotonic() - (self.interrupted_at or time.monotonic()))
        reply = self._reply_within(grace_left)
        if reply is None and self.ctx.forward_interrupt:
            self.process.interrupt()
        reply = reply or self._reply_within(timeout)
        if reply is None:
            self.process.kill()
            reply = self._reply_within(30.0) or Reply(-signal.SIGKILL)
        self._finished(reply)

    def remaining_s(self) -> float:
        return max(self.expected_s - (time.perf_counter() - self.t0), 0.0)

    # ----------------------------------------------------------------- helpers
    def _launch(self, args: list[str], verb: str, detail: str = "") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # members share the terminal badly, and torchrun's ranks always do: each writes its own log
        log = self.dir / f"{self.phase}.log" if self.ctx.parallel or self.slot.nproc > 1 else None
        where = f", log {log}" if log else ""
        self.ctx.view.message(f"{verb} {self.name}{detail} on {self.slot.device}{where}")
        try:
            self.process.submit(args, log)
        except OSError as exc:
            if self.phase == "eval":
                self.member.eval_status, self.member.eval_error = "failed", f"could not start: {exc}"
            else:
                self._record_failure(f"could not start: {exc}")
            return
        self.running = True
        self.member.pid = self.process.pid

    def _finished(self, reply: Reply) -> bool:
        """Record a command's end; returns True when the job is over (False: the eval phase started)."""
        self.running = False
        m = self.member
        m.pid = None
        if self.phase == "eval":
            m.eval_tasks = self.ctx.options.eval_tasks
            m.eval_status = "done" if reply.code == 0 else "failed"
            m.eval_error = None if reply.code == 0 else self._error_message(reply)
            if m.eval_error:
                self.ctx.view.message(f"eval of {self.name} failed: {m.eval_error}")
            self._prune_checkpoints()
            return True
        wall = time.perf_counter() - self.t0
        m.returncode, m.finished, m.wall_s = reply.code, now(), round((m.wall_s or 0.0) + wall, 3)
        state = disk_state(self.dir, m.steps)
        if state.action == "done" and (reply.code == 0 or reply.code in INTERRUPTED_CODES):
            m.status, m.error = "done", None
            m.timing = self._timing(wall, state)
            trained = (m.tokens or 0) * (1 - (m.resumed_from_step or 0) / (m.steps or 1))
            self.ctx.estimator.add(self.ctx.flops_of(m), int(trained), wall)
            self.ctx.view.message(f"done {self.name}: {_result_line(self.dir)} in {clock(wall)} "
                                  f"(overhead {m.timing['overhead_s']:.1f}s)")
            if self.ctx.needs_eval(m) and self.interrupted_at is None:
                self.phase = "eval"
                self.ctx.save()
                self._launch(self._eval_args(), verb="evaluate")
                return not self.running
            self._prune_checkpoints()
            return True
        if reply.code in INTERRUPTED_CODES:
            m.status = "interrupted"
            m.error = f"interrupted at step {state.step}" if state.action == "resume" else "interrupted"
            self.ctx.view.message(f"interrupted {self.name} ({m.error}); rerun the sweep to resume it")
            return True
        self._record_failure(self._error_message(reply) if reply.code != 0
                             else f"finished without the planned {m.steps} steps")
        return True

    def _timing(self, wall: float, state: DiskState) -> dict[str, Any]:
        """This attempt's wall time, the part spent waiting for a new worker's imports (once per worker, while
        the sweep planned), the trainer's training time, and the rest: the member's own overhead."""
        train = max(state.train_time_s - self.start_state.train_time_s, 0.0)
        waited = min(self.process.waited(), wall)
        kind = "torchrun" if self.slot.nproc > 1 else ("new worker" if self.process.cold else "warm worker")
        return {"wall_s": round(wall, 3), "worker_start_s": round(waited, 3), "train_s": round(train, 3),
                "overhead_s": round(wall - waited - train, 3),
                "first_step_s": member_results(self.dir).get("first_step_s"), "process": kind,
                "pid": self.process.pid}

    def _prune_checkpoints(self) -> None:
        """`--member-checkpoints best|none`: a finished member's optimizer states (gigabytes each for the GPU
        presets) go; "best" keeps the best weights for `eval` / `generate` (the final ones if there is no best)."""
        mode = self.ctx.options.member_checkpoints
        root = self.dir / "checkpoints"
        if mode == "all" or not root.is_dir():
            return
        keep = set() if mode == "none" else ({"best"} if (root / "best").is_dir() else {"final"})
        for entry in root.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()

    def _reply_within(self, seconds: float) -> Reply | None:
        deadline = time.monotonic() + max(seconds, 0.01)
        while True:
            reply = self.process.poll()
            if reply is not None or time.monotonic() >= deadline:
                return reply
            time.sleep(0.05)

    def _clear_failed_attempt(self) -> str | None:
        """Delete what an earlier attempt of this member left (no checkpoint to resume from).

        Only a directory holding nothing but the sweep's logs and a run of this member's planned config
        is deleted, and only while no process writes it; otherwise the reason is returned."""
        try:
            config = load_planned_config(self.ctx.plan, self.member)
        except HybridLMError as exc:
            return f"{self.ctx.plan.config_path(self.member)}: {exc}"
        if not is_member_leftover(self.dir, config):
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

    def _error_message(self, reply: Reply) -> str:
        if reply.error:
            return reply.error
        if reply.code < 0:
            try:
                name = signal.Signals(-reply.code).name
            except ValueError:
                name = f"signal {-reply.code}"
            hint = " (out of memory?)" if reply.code == -signal.SIGKILL else ""
            return f"killed by {name}{hint}"
        return f"exited with code {reply.code}"

    def _progress_args(self) -> list[str]:
        progress = False if (self.ctx.parallel or self.slot.nproc > 1) else self.ctx.options.progress
        return [] if progress is None else (["--progress"] if progress else ["--no-progress"])

    def _eval_args(self) -> list[str]:
        o = self.ctx.options
        args = ["eval", "--run", str(self.dir), "--tasks", o.eval_tasks or ""]
        if o.eval_limit is not None:
            args += ["--limit", str(o.eval_limit)]
        if o.eval_data_dir:
            args += ["--data-dir", o.eval_data_dir]
        return args + self._progress_args()


def _result_line(run_dir) -> str:
    best = member_results(run_dir).get("best_val_loss")
    return f"best val loss {best:.4f}" if best is not None else "no validation loss"
