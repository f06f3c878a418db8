"""The process of one sweep member: `hybridlm <command> ...`, plus a file that records why it failed.

    python -m hybridlm.sweep.member --error-file DIR/NAME/train_error.txt train --preset ... --out DIR/NAME

runs exactly what `python -m hybridlm.cli train ...` runs (same parser, same function), in its own
process so a crash or a kill stays contained. The output still goes to the terminal (progress bars
work), and the one-line error message lands in the error file for sweep.json and summary.md.
"""

from __future__ import annotations

import contextlib
import io
import sys
import traceback
from pathlib import Path


def _record(error_file: Path | None, message: str) -> None:
    if error_file is not None:
        error_file.parent.mkdir(parents=True, exist_ok=True)
        error_file.write_text(message.strip() + "\n")


def main(argv: list[str] | None = None) -> int:
    argv_given = argv
    argv = list(sys.argv[1:] if argv is None else argv)
    error_file = None
    if len(argv) >= 2 and argv[0] == "--error-file":
        error_file, argv = Path(argv[1]), argv[2:]
    from hybridlm.cli import build_parser
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
        _record(error_file, lines[-1] if lines else f"hybridlm {' '.join(argv[:1])}: bad arguments")
        return int(exc.code) if isinstance(exc.code, int) else 2
    sys.stderr.write(captured.getvalue())
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as exc:
        if argv_given is None:  # the process is ours: a late second signal must not change the exit code
            from hybridlm.cli import _ignore_further_signals

            _ignore_further_signals()
        print(f"{exc}", file=sys.stderr)
        _record(error_file, str(exc))
        return exc.exit_code
    except HybridLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        _record(error_file, str(exc))
        return 2
    except KeyboardInterrupt:
        _record(error_file, "interrupted")
        return 130
    except SystemExit as exc:
        if exc.code not in (0, None):
            _record(error_file, f"exited with {exc.code}")
        raise
    except BaseException as exc:  # a bug: keep the traceback on the terminal, the last line in the file
        traceback.print_exc()
        _record(error_file, f"{type(exc).__name__}: {exc}".splitlines()[0])
        return 1


if __name__ == "__main__":
    sys.exit(main())
