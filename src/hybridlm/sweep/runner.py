"""Running a sweep: decide what each member still needs, run the member jobs on the slots, report.

Each member is its own process (see `job`), so a crash, an out-of-memory kill or a Ctrl-C of one
member is contained: it is recorded in sweep.json (status "failed" with its error, or
"interrupted") and the others go on. Rerunning the same command skips finished members, resumes
interrupted ones from their last checkpoint and reruns failed ones. Members start from the config
files written when the plan was first saved (DIR/configs/NAME.toml, see `state.record_member_configs`).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.sweep.devices import Slot, parse_devices
from hybridlm.sweep.estimate import TimeEstimator, eta_seconds, flops_per_token
from hybridlm.sweep.job import MemberJob
from hybridlm.sweep.plan import Member, SweepPlan
from hybridlm.sweep.progress import Counts, SweepProgress
from hybridlm.sweep.queue import SlotQueue
from hybridlm.sweep.state import (SweepLock, disk_state, member_results, merge_with_previous, record_member_configs,
                                  write_sweep)


@dataclass
class RunOptions:
    devices: str | None = "auto"
    progress: bool | None = None
    eval_tasks: str | None = None
    eval_limit: int | None = None
    eval_data_dir: str | None = None
    python: str = sys.executable
    poll_interval: float = 0.2


class SweepContext:
    """What the member jobs share: the plan, the options, the view, the time estimator."""

    def __init__(self, plan: SweepPlan, options: RunOptions, slots: list[Slot], command: list[str] | None):
        self.plan = plan
        self.options = options
        self.slots = slots
        self.command = command
        self.parallel = len(slots) > 1
        self.view = SweepProgress(enabled=options.progress, live=self.parallel)
        self.estimator = TimeEstimator(slots[0].device)
        self.flops: dict[str, float] = {}
        self.forward_interrupt = True

    def flops_of(self, member: Member) -> float:
        if member.name not in self.flops:
            self.flops[member.name] = flops_per_token(member.build_config())
        return self.flops[member.name]

    def save(self) -> None:
        write_sweep(self.plan, self.command)

    def needs_eval(self, member: Member) -> bool:
        tasks = self.options.eval_tasks
        return bool(tasks) and not (member.eval_status == "done" and member.eval_tasks == tasks)


def run_sweep(plan: SweepPlan, options: RunOptions, command: list[str] | None = None) -> dict[str, Any]:
    """Train every member that is not finished yet, then write summary.json, summary.md and the plots."""
    from hybridlm.sweep.summary import write_summary

    slots = parse_devices(options.devices)
    _refuse_pinned_devices(plan)
    ctx = SweepContext(plan, options, slots, command)
    with SweepLock(plan.out):
        merge_with_previous(plan)
        record_member_configs(plan)  # plan time: configs/NAME.toml + config_sha256, before sweep.json is saved
        jobs = _jobs_to_run(ctx)
        ctx.save()
        _prepare_data(ctx, jobs)
        jobs = [j for j in jobs if j.member.status != "failed"]
        queue = SlotQueue(jobs, slots, on_change=lambda: _on_change(ctx, queue), poll_interval=options.poll_interval,
                          on_tick=ctx.view.tick)
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt(ctx)) if _main_thread() else None
        try:
            ctx.forward_interrupt = not _terminal_sent_sigint()
            queue.run()
        except KeyboardInterrupt:
            for member in plan.members:  # whatever the interrupt cut short is not "running" any more
                if member.status == "running":
                    member.status, member.pid = "interrupted", None
                    member.error = member.error or "interrupted"
            ctx.save()
            ctx.view.close()
            write_summary(plan, command, plots=False)
            done = sum(m.status == "done" for m in plan.members)
            print(f"sweep interrupted: {done} of {len(plan.members)} members done; rerun the same command to go on "
                  "(finished members are kept, interrupted ones resume from their checkpoints)", file=sys.stderr)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            ctx.view.close()
        ctx.save()
        summary = write_summary(plan, command)
    return summary


def _jobs_to_run(ctx: SweepContext) -> list[MemberJob]:
    """Decide from disk what each member needs; report it in one line."""
    jobs, skipped, resumed = [], 0, 0
    for member in ctx.plan.members:
        if not member.valid:
            member.status = "failed"
            continue
        state = disk_state(ctx.plan.member_dir(member), member.steps)
        if state.action == "done":
            member.status, member.error = "done", None
            skipped += 1
            results = member_results(ctx.plan.member_dir(member))
            ctx.estimator.add(ctx.flops_of(member), member.tokens or 0,
                              member.wall_s or results.get("total_time_s"))
            if ctx.needs_eval(member):
                jobs.append(MemberJob(ctx, member))
            continue
        member.status = "planned"
        resumed += state.action == "resume"
        jobs.append(MemberJob(ctx, member))
    invalid = sum(m.status == "failed" for m in ctx.plan.members)
    evals = sum(j.member.status == "done" for j in jobs)
    ctx.view.message(f"{_plural(len(ctx.plan.members), 'member')} in {ctx.plan.out}: {skipped} finished (skipped), "
                     f"{resumed} to resume, {len(jobs) - resumed - evals} to train"
                     + (f", {invalid} with an invalid config" if invalid else "")
                     + (f", {evals} to evaluate" if evals else "")
                     + (f"; {len(ctx.slots)} slots: {', '.join(s.device for s in ctx.slots)}" if ctx.parallel else ""))
    if not jobs:
        ctx.view.message("nothing to train")
    return jobs


def _prepare_data(ctx: SweepContext, jobs: list[MemberJob]) -> None:
    """Tokenise each distinct data config once, before members start (parallel members would wait)."""
    pending = [j for j in jobs if j.member.status != "done"]
    if not pending:
        return
    from hybridlm.data import prepare_data

    by_data: dict[str, list[MemberJob]] = {}
    configs = {}
    for job in pending:
        config = job.member.build_config()
        key = repr(sorted(config.to_dict()["data"].items()))
        by_data.setdefault(key, []).append(job)
        configs[key] = config
    for key, group in by_data.items():
        try:
            prepare_data(configs[key].data, progress=ctx.options.progress is not False)
        except HybridLMError as exc:
            for job in group:
                job.member.status, job.member.error = "failed", f"data: {exc}"
            ctx.view.message(f"data for {', '.join(j.name for j in group)} failed: {exc}")
    ctx.save()


def _on_change(ctx: SweepContext, queue: SlotQueue, force: bool = False) -> None:
    ctx.save()
    running = [job for job, _ in queue.running.values()]
    busy = {job.name for job in running} | {job.name for job in queue.queued}
    idle = [m for m in ctx.plan.members if m.name not in busy]
    counts = Counts(done=sum(m.status == "done" for m in idle),
                    failed=sum(m.status in ("failed", "interrupted") for m in idle), running=len(running),
                    queued=len(queue.queued))
    remaining = [j.remaining_s() for j in running]
    for job in queue.queued:
        m = job.member
        remaining.append(ctx.estimator.seconds(ctx.flops_of(m), m.tokens or 0))
    eta = eta_seconds(remaining, len(ctx.slots)) if (ctx.estimator.measured or not remaining) else None
    ctx.view.status(counts, eta, force=force)


def _refuse_pinned_devices(plan: SweepPlan) -> None:
    for member in plan.members:
        if member.error is None:
            device = member.build_config().train.device
            if device not in ("auto", "cpu", "cuda", "cuda:0"):
                raise ConfigError(f"member {member.name} sets train.device={device}; place members with "
                                  "--devices (each gets one GPU as its cuda:0) instead")


def _terminal_sent_sigint() -> bool:
    """True when Ctrl-C reaches the members too (they share the terminal's foreground group)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, AttributeError, ValueError):
        return False


def _sigterm_as_interrupt(ctx: SweepContext):
    def handler(signum, frame):
        ctx.forward_interrupt = True
        raise KeyboardInterrupt

    return handler


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
