"""The processes a slot runs `hybridlm` commands in: a warm worker, or torchrun for a K-process member.

Both take one command at a time (`submit`), answer `poll()` with a `Reply` once it ended, and can
be interrupted or killed. `WarmWorker` keeps one `python -m hybridlm.sweep.worker` alive across
commands and starts a fresh one after a command that did not succeed (the worker exits then);
`TorchrunProcess` starts `python -m torch.distributed.run --nproc_per_node K -m hybridlm ARGV`
per command, with the slot's K devices in CUDA_VISIBLE_DEVICES. Processes stay in the sweep's
process group, so Ctrl-C at a terminal reaches them as it reaches the sweep.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hybridlm.sweep.devices import Slot

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
ERROR_LINE = re.compile(r"^(?:rank \d+: )?error: (.*)$")


@dataclass(frozen=True)
class Reply:
    code: int                       # the command's exit code; negative: the process died of that signal
    error: str | None = None        # its one-line error message, when it gave one


def member_env(slot: Slot) -> dict[str, str]:
    env = {**os.environ, **slot.env}
    # the member must import this very hybridlm, also when it runs from a source checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


class SlotProcess:
    """What both kinds share: the process of the command running (`busy`), signals to it."""

    def __init__(self, slot: Slot, python: str):
        self.slot, self.python = slot, python
        self.proc: subprocess.Popen | None = None
        self.busy = False
        self.cold = True               # the command running is its process's first (it paid for the imports)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def interrupt(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()


class WarmWorker(SlotProcess):
    """One warm worker process on a slot, started at once so its imports overlap the sweep's own work."""

    def __init__(self, slot: Slot, python: str):
        super().__init__(slot, python)
        self._reply_fd: int | None = None
        self._submitted_at = 0.0
        self._start()

    def submit(self, argv: list[str], log: Path | None) -> None:
        if self.proc is None or self.proc.poll() is not None:  # replaced after a command that did not succeed
            self._close_pipe()
            self._start()
        self.cold, self._used = not self._used, True
        self.busy, self._submitted_at = True, time.monotonic()
        try:
            self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log) if log else None}).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:  # it died while idle: poll() reports that
            pass

    def poll(self) -> Reply | None:
        """The reply of the running command once it ended (read without blocking)."""
        while self.busy:
            if b"\n" not in self._buffer:
                if not select.select([self._reply_fd], [], [], 0)[0]:
                    return None
                chunk = os.read(self._reply_fd, 65536)
                if not chunk:  # the process is gone without a reply: a crash, a kill, out of memory
                    self.proc.wait()
                    self.busy = False
                    return Reply(self.proc.returncode)
                self._buffer += chunk
                continue
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "ready" in message:
                self._ready_at = message["ready"]
                continue
            if message["code"] != 0:
                self.proc.wait()  # the worker exits after a command that did not succeed
            self.busy = False
            return Reply(message["code"], message.get("error"))
        return None

    def waited(self) -> float:
        """Seconds the last command waited for its worker's start (the imports) to finish."""
        return max((self._ready_at or time.monotonic()) - self._submitted_at, 0.0)

    def fileno(self) -> int:
        return self._reply_fd

    def close(self, timeout: float = 10.0) -> None:
        """No more commands: the worker exits when its stdin closes (killed if it does not)."""
        if self.proc is None:
            return
        if not self._used:  # never given a command: nothing to finish, no need to wait for its imports
            self.proc.terminate()
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._close_pipe()
        self.proc = None

    def _start(self) -> None:
        read_fd, write_fd = os.pipe()
        self.proc = subprocess.Popen([self.python, "-m", "hybridlm.sweep.worker", "--reply-fd", str(write_fd)],
                                     stdin=subprocess.PIPE, env=member_env(self.slot), pass_fds=(write_fd,))
        os.close(write_fd)
        self._reply_fd, self._buffer, self._used = read_fd, b"", False
        self._ready_at: float | None = None      # time.monotonic() of the worker when its imports were done

    def _close_pipe(self) -> None:
        if self._reply_fd is not None:
            os.close(self._reply_fd)
            self._reply_fd = None


class TorchrunProcess(SlotProcess):
    """A K-process member: torchrun per command (every command cold); its output always goes to its log."""

    log: Path | None = None

    def command(self, argv: list[str]) -> list[str]:
        """Training under torchrun over the slot's K devices; anything else (eval) as one process."""
        if argv[:1] != ["train"]:
            return [self.python, "-m", "hybridlm", *argv]
        return [self.python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={self.slot.nproc}",
                "-m", "hybridlm", *argv]

    def submit(self, argv: list[str], log: Path | None) -> None:
        self.log = log
        with open(log, "a") as out:
            self.proc = subprocess.Popen(self.command(argv), env=member_env(self.slot), stdout=out,
                                         stderr=subprocess.STDOUT)
        self.busy = True

    def waited(self) -> float:
        return 0.0  # torchrun's start is part of every member it runs

    def poll(self) -> Reply | None:
        if not self.busy or self.proc.poll() is None:
            return None
        self.busy = False
        code, error = self.proc.returncode, last_error(self.log)
        if code != 0 and error and "interrupted by SIG" in error:
            code = 130  # torchrun reports a rank's clean stop after a signal as a failure of its own
        return Reply(code, error)

    def close(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                self.proc.wait()


def last_error(log: Path | None) -> str | None:
    """The last `error: ...` (or `interrupted by ...`) line a member's ranks wrote to its log."""
    if log is None or not log.is_file():
        return None
    found = None
    for line in log.read_text(errors="replace").splitlines():
        match = ERROR_LINE.match(line.strip())
        if match:
            found = match.group(1)
        elif line.startswith("interrupted by SIG"):
            found = line.strip()
    return found


def start_processes(slots: list[Slot], python: str) -> dict[int, WarmWorker | TorchrunProcess]:
    """Each slot's process, by slot index; warm workers start (and import) at once."""
    return {s.index: (TorchrunProcess if s.nproc > 1 else WarmWorker)(s, python) for s in slots}


def wait_any(processes: list, timeout: float) -> None:
    """Sleep until a warm worker has news or `timeout` passes (torchrun members are polled)."""
    fds = [p.fileno() for p in processes if isinstance(p, WarmWorker) and p.busy]
    if fds:
        select.select(fds, [], [], timeout)
    else:
        time.sleep(timeout)
