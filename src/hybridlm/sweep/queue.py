"""A work queue over device slots: each slot runs one job at a time, jobs start in plan order.

Jobs are polled, not waited on in threads: one loop starts a job whenever a slot is free, sleeps in
`wait` (which may wake early when a process has news) and hears about every change (`on_change`)
to redraw the sweep view and rewrite sweep.json.
With one slot this is a plain sequential loop; with N slots at most N jobs run at once.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from hybridlm.sweep.devices import Slot


class Job(Protocol):
    name: str

    def start(self, slot: Slot) -> None:
        """Launch the job's (first) process on `slot`; must not block."""

    def poll(self) -> bool:
        """True once the job is finished (successfully or not); may start its next phase."""

    def interrupt(self) -> None:
        """Ask the running process to stop cleanly (it saves a checkpoint)."""

    def wait_stopped(self, timeout: float) -> None:
        """After `interrupt`: wait for the process to exit (kill it after `timeout`)."""


class SlotQueue:
    def __init__(self, jobs: Iterable[Job], slots: list[Slot], on_change: Callable[[], None] | None = None,
                 poll_interval: float = 0.2, on_tick: Callable[[], None] | None = None,
                 wait: Callable[[float], None] = time.sleep):
        if not slots:
            raise ValueError("a queue needs at least one slot")
        self.queued: deque[Job] = deque(jobs)
        self.free: list[Slot] = list(slots)
        self.running: dict[int, tuple[Job, Slot]] = {}
        self.finished: list[Job] = []
        self.on_change = on_change or (lambda: None)
        self.on_tick = on_tick or (lambda: None)
        self.poll_interval = poll_interval
        self.wait = wait
        self.max_running = 0

    def run(self) -> list[Job]:
        """Run every job; on Ctrl-C interrupt the running ones, wait for their checkpoints, re-raise."""
        try:
            while self.queued or self.running:
                self._fill_free_slots()
                self.wait(self.poll_interval)
                self._collect_finished()
                self.on_tick()
        except KeyboardInterrupt:
            for job, _ in self.running.values():
                job.interrupt()
            for job, _ in self.running.values():
                job.wait_stopped(timeout=120.0)
            self.on_change()
            raise
        return self.finished

    def _fill_free_slots(self) -> None:
        while self.queued and self.free:
            slot = self.free.pop(0)
            job = self.queued.popleft()
            job.start(slot)
            self.running[slot.index] = (job, slot)
            self.max_running = max(self.max_running, len(self.running))
            self.on_change()

    def _collect_finished(self) -> None:
        for index, (job, slot) in list(self.running.items()):
            if job.poll():
                del self.running[index]
                self.free.append(slot)
                self.free.sort(key=lambda s: s.index)
                self.finished.append(job)
                self.on_change()
