"""A progress bar on a terminal, plain log lines elsewhere (CI logs, files, notebooks' stdout)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, enabled: bool | None = None, is_main: bool = True):
        self.total = total
        self.is_main = is_main
        self.use_bar = is_main and (enabled if enabled is not None else sys.stderr.isatty())
        self.bar = None
        self._t0 = time.perf_counter()
        self._start_step = 0

    def start(self, step: int) -> None:
        self._start_step = step
        self._t0 = time.perf_counter()
        if self.use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=step, desc="train", unit="step", dynamic_ncols=True)

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:,.0f}")
            return
        done = step - self._start_step
        elapsed = time.perf_counter() - self._t0
        eta = elapsed / done * (self.total - step) if done else 0.0
        print(f"step {step}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s  "
              f"eta {_clock(eta)}", flush=True)

    def write(self, message: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
