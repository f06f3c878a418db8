"""Running a sweep: decide what each member still needs, train the members on the slots, report.

Each slot keeps one warm worker process (`processes`) that trains its members one after another,
so a member costs its training plus about a second, not a process start, imports and a cold GPU.
A member that crashes, runs out of memory or is killed is recorded in sweep.json (status "failed"
with its error) and its worker is replaced; the others go on. Ctrl-C or SIGTERM lets every running
member save a checkpoint, records it as "interrupted" and stops. Rerunning the same command skips
finished members, resumes interrupted ones from their last checkpoint and reruns failed ones.
Members train from the config files written when the plan was first saved (DIR/configs/NAME.toml).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

from hybridlm.errors import ConfigError
from hybridlm.sweep.budget import account_data
from hybridlm.sweep.configs import merge_with_previous, record_member_configs
from hybridlm.sweep.devices import parse_devices
from hybridlm.sweep.estimate import eta_seconds
from hybridlm.sweep.job import MemberJob, RunOptions, SweepContext
from hybridlm.sweep.processes import start_processes, wait_any
from hybridlm.sweep.progress import Counts
from hybridlm.sweep.queue import SlotQueue
from hybridlm.sweep.records import disk_state, member_results
from hybridlm.sweep.state import SweepLock, SweepPlan
from hybridlm.sweep.summary import write_summary

__all__ = ["RunOptions", "run_sweep"]


def run_sweep(plan: SweepPlan, options: RunOptions, command: list[str] | None = None,
              processes: dict[int, Any] | None = None) -> dict[str, Any]:
    """Train every member that is not finished yet, then write summary.json, summary.md and the plots.

    `processes` (from `start_processes` on the same --devices) may have been started before the plan
    was built, so that their imports overlap planning; they are closed here."""
    slots = parse_devices(options.devices, per_member=plan.members[0].nproc if plan.members else 1)
    ctx = SweepContext(plan, options, slots, command)
    ctx.processes = processes or {}
    try:
        _refuse_pinned_devices(plan)
        with SweepLock(plan.out):
            merge_with_previous(plan)
            jobs = _jobs_to_run(ctx)
            if jobs and not ctx.processes:  # started now, so their imports overlap the data preparation below
                ctx.processes = start_processes(slots, options.python)
            # tokenised before anything is written: a plan the data cannot serve is refused with nothing saved
            for warning in account_data(plan, progress=options.progress is not False):
                ctx.view.message(f"warning: {warning}")
            record_member_configs(plan)  # plan time: configs/NAME.toml + config_sha256, before sweep.json is saved
            ctx.save()
            _train(ctx, [j for j in jobs if j.member.status != "failed"])
            ctx.save()
            return write_summary(plan, command)
    finally:
        for process in ctx.processes.values():
            process.close()


def _train(ctx: SweepContext, jobs: list[MemberJob]) -> None:
    processes = list(ctx.processes.values())
    queue = SlotQueue(jobs, ctx.slots, on_change=lambda: _on_change(ctx, queue), poll_interval=ctx.options.poll_interval,
                      on_tick=ctx.view.tick, wait=lambda seconds: wait_any(processes, seconds))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt(ctx)) if main_thread else None
    try:
        ctx.forward_interrupt = not _terminal_sent_sigint()
        queue.run()
    except KeyboardInterrupt:
        for member in ctx.plan.members:  # whatever the interrupt cut short is not "running" any more
            if member.status == "running":
                member.status, member.pid = "interrupted", None
                member.error = member.error or "interrupted"
        ctx.save()
        ctx.view.close()
        write_summary(ctx.plan, ctx.command, plots=False)
        done = sum(m.status == "done" for m in ctx.plan.members)
        print(f"sweep interrupted: {done} of {len(ctx.plan.members)} members done; rerun the same command to go on "
              "(finished members are kept, interrupted ones resume from their checkpoints)", file=sys.stderr)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        ctx.view.close()


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


def _on_change(ctx: SweepContext, queue: SlotQueue) -> None:
    ctx.save()
    running = [job for job, _ in queue.running.values()]
    busy = {job.name for job in running} | {job.name for job in queue.queued}
    idle = [m for m in ctx.plan.members if m.name not in busy]
    counts = Counts(done=sum(m.status == "done" for m in idle),
                    failed=sum(m.status in ("failed", "interrupted") for m in idle), running=len(running),
                    queued=len(queue.queued))
    remaining = [j.remaining_s() for j in running]
    remaining += [ctx.estimator.seconds(ctx.flops_of(j.member), j.member.tokens or 0) for j in queue.queued]
    eta = eta_seconds(remaining, len(ctx.slots)) if (ctx.estimator.measured or not remaining) else None
    ctx.view.status(counts, eta)


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


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
