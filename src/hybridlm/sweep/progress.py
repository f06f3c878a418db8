"""The sweep's own view (members done / running / queued, ETA), above each member's output.

On a terminal with one slot, every member inherits the terminal and draws its own progress bar, so
the sweep prints a static tqdm-style bar line before each member starts and after it ends. With
several slots the members write to log files and the sweep keeps one live bar. Without a terminal
(CI, files), plain lines: `[sweep] 3/13 done, 1 running, 9 queued, ETA 0:12:30`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from hybridlm.sweep.estimate import clock


@dataclass
class Counts:
    done: int = 0
    failed: int = 0
    running: int = 0
    queued: int = 0

    @property
    def total(self) -> int:
        return self.done + self.failed + self.running + self.queued

    def line(self, eta: float | None) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return (f"{self.done}/{self.total} done{failed}, {self.running} running, "
                f"{self.queued} queued, ETA {clock(eta) if eta is not None else '?'}")


class SweepProgress:
    def __init__(self, enabled: bool | None = None, live: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.use_bar = enabled if enabled is not None else self.stream.isatty()
        self.live = live and self.use_bar
        self.bar = None
        self.started = time.perf_counter()
        self._last_line = ""

    def status(self, counts: Counts, eta: float | None, force: bool = False) -> None:
        """Show where the sweep stands; repeated identical lines are not printed twice."""
        text = counts.line(eta)
        if self.live:
            self._live_bar(counts, text)
            return
        if text == self._last_line and not force:
            return
        self._last_line = text
        if self.use_bar:
            from tqdm import tqdm

            line = tqdm.format_meter(counts.done + counts.failed, counts.total,
                                     time.perf_counter() - self.started, prefix="sweep", unit="run",
                                     postfix=f"{counts.running} running, {counts.queued} queued, "
                                             f"ETA {clock(eta) if eta is not None else '?'}")
            print(line, file=self.stream, flush=True)
        else:
            print(f"[sweep] {text}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(f"[sweep] {text}", file=self.stream)
        else:
            print(f"[sweep] {text}", file=self.stream, flush=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _live_bar(self, counts: Counts, text: str) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=counts.total, desc="sweep", unit="run", file=self.stream, dynamic_ncols=True)
        self.bar.total = counts.total
        self.bar.n = counts.done + counts.failed
        self.bar.set_postfix_str(text.split(", ", 1)[1] if ", " in text else text)
