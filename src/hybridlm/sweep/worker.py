"""A warm sweep worker: one process per device slot that runs `hybridlm` commands one after another.

    python -m hybridlm.sweep.worker --reply-fd N     # requests on stdin, one JSON object a line

A request {"argv": ["train", "--config", "DIR/configs/NAME.toml", "--out", "DIR/NAME"], "log": path
or null} runs exactly what `hybridlm ARGV` runs (the same parser and function, so the same config
resolution and `hybridlm.train.train`), in this process: imports, FLA, the CUDA context, the token
cache's pages and Triton's autotune results stay warm from one member to the next. The reply
{"code": 0, "error": null, "seconds": 12.3} goes back on the reply pipe, after one {"ready": time}
once the imports are done (stdout and stderr belong to the member: the terminal, or its log file).

Isolation where it matters: after a command that did not succeed (an error, out of memory, a crash
the sweep only sees as this process dying, or an interrupt) the worker exits, and the sweep starts a
fresh one for the next member, so nothing a broken member left behind reaches another.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator


def run_command(argv: list[str]) -> tuple[int, str | None]:
    """`hybridlm ARGV` in this process: (exit code, one-line error message or None)."""
    from hybridlm.cli import _ignore_further_signals, build_parser
    from hybridlm.errors import HybridLMError, TrainingInterrupted

    parser = build_parser()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # unknown subcommand or option: argparse's own message
        text = captured.getvalue()
        sys.stderr.write(text)
        lines = [line for line in text.splitlines() if line.strip()]
        return (int(exc.code) if isinstance(exc.code, int) else 2,
                lines[-1] if lines else f"hybridlm {' '.join(argv[:1])}: bad arguments")
    sys.stderr.write(captured.getvalue())
    try:
        args.raw_argv = list(argv)
        return int(args.func(args) or 0), None
    except TrainingInterrupted as exc:
        _ignore_further_signals()  # a late second signal must not change the outcome: this worker is done
        print(f"{exc}", file=sys.stderr)
        return exc.exit_code, str(exc)
    except HybridLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, str(exc)
    except KeyboardInterrupt:
        return 130, "interrupted"
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, None if code == 0 else f"exited with {exc.code}"
    except BaseException as exc:  # a bug or an out-of-memory error: the traceback to the log, one line to the sweep
        traceback.print_exc()
        return 1, f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextlib.contextmanager
def output_to(log: str | None) -> Iterator[None]:
    """The member's stdout and stderr (file descriptors 1 and 2, so C code and subprocesses follow) into `log`."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, kept in zip((1, 2), saved):
                os.dup2(kept, fd)
                os.close(kept)


WARM_MODULES = ("hybridlm.cli", "hybridlm.data", "hybridlm.train.launch", "hybridlm.train.setup",
                "hybridlm.train.trainer", "hybridlm.evaluation")


def warm_up() -> None:
    """Import what every member needs, and draw one throwaway figure (fonts, the Agg backend), before the
    first request arrives: the sweep plans and tokenises meanwhile, so its first member starts warm too."""
    for name in WARM_MODULES:
        importlib.import_module(name)
    from hybridlm.runs.plots import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0], label="x")
    ax.set_title("warm-up")
    ax.legend()
    fig.tight_layout()
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)


def release_memory() -> None:
    """What the finished member held (its model, optimizer, batches) goes back before the next one starts:
    a reference cycle could otherwise keep gigabytes of GPU memory alive until the collector ran."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def serve(requests, reply) -> int:
    """Answer requests until stdin closes (0) or a command does not succeed (its exit code)."""
    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        started = time.perf_counter()
        with output_to(request.get("log")):
            code, error = run_command(request["argv"])
        release_memory()
        reply.write(json.dumps({"code": code, "error": error, "seconds": time.perf_counter() - started}) + "\n")
        reply.flush()
        if code != 0:
            return code
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybridlm.sweep.worker")
    parser.add_argument("--reply-fd", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        with os.fdopen(args.reply_fd, "w") as reply:
            warm_up()
            # when it got ready, on the clock every process of this machine shares: members are timed from here
            reply.write(json.dumps({"ready": time.monotonic()}) + "\n")
            reply.flush()
            return serve(sys.stdin, reply)
    except KeyboardInterrupt:  # Ctrl-C while idle: nothing to save
        return 130
    except BrokenPipeError:  # the sweep is gone
        return 1


if __name__ == "__main__":
    sys.exit(main())
