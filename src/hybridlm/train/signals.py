"""SIGINT / SIGTERM as a request to stop at the next consistent point, not an exception anywhere.

Schedulers (SLURM, Kubernetes) send SIGTERM before they kill; Ctrl-C sends SIGINT. Raising at an
arbitrary bytecode (mid-step, mid-evaluation, mid-save) leaves the sampler, RNG and optimizer out
of step with each other. Instead the handler records the signal; the loop finishes the step it
is in (and that step's evaluation / save), writes one checkpoint and exits 130 / 143. Further
signals while that happens are reported and ignored, so a double Ctrl-C cannot cut the save.
Before the loop (setup: data, model build) there is nothing to save, so a signal stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading

from hybridlm.errors import TrainingInterrupted

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class GracefulStop:
    """`with GracefulStop() as stop:` ... `stop.arm()` when the loop starts; poll `stop.requested`."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_CODES:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def arm(self) -> None:
        """From now on a signal is honoured at the next consistent point instead of at once."""
        self.armed = True
        if self.signum is not None:  # arrived during setup, after it could raise
            raise self.interrupted("before the first step")

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)

    def interrupted(self, where: str, detail: str = "") -> TrainingInterrupted:
        return TrainingInterrupted(f"interrupted by {self.name} {where}{detail}", self.exit_code)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            print(f"\n{signal.Signals(signum).name} again: still writing the checkpoint, please wait",
                  file=sys.stderr, flush=True)
            return
        self.signum = signum
        if not self.armed:
            raise self.interrupted("during setup", "; nothing was trained")
        print(f"\n{self.name}: finishing this step, then saving a checkpoint and exiting",
              file=sys.stderr, flush=True)
