"""Fault injection: SIGKILL a training process at random moments, resume it each time, and check
that the final weights and the logged losses equal those of an uninterrupted run, bit for bit.

    python scripts/fault_inject.py --kills 20 --seed 1            # the long version (~3 min on 2 cores)
    python scripts/fault_inject.py --kills 3 --steps 120          # what CI runs (tests/test_fault_injection.py)

SIGKILL cannot be caught: it lands mid-step, mid-evaluation, mid-save or during start-up, and
what survives on disk is all a resume has. Runs on CPU, where training is deterministic.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _train_cmd(out: Path, steps: int, fresh: bool, overwrite: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "hybridlm.cli", "train", "--no-progress"]
    if not fresh:
        return cmd + ["--resume", str(out)]
    cmd += ["--preset", "tiny", "--out", str(out), "--set", f"train.max_steps={steps}", "--set", "train.save_interval=7",
            "--set", "train.log_interval=3", "--set", "train.eval_interval=20", "--set", "train.keep_checkpoints=2"]
    return cmd + (["--overwrite"] if overwrite else [])


def _run(cmd: list[str], env: dict, kill_after: float | None = None) -> int | None:
    """Run `cmd`; SIGKILL it after `kill_after` seconds if it is still running. None when killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[3:])} exited {proc.returncode}: {proc.stderr.read().strip()[-500:]}")
    return proc.returncode


def _resumable(out: Path) -> bool:
    sys.path.insert(0, str(SRC))
    from hybridlm.runs import RunDir

    return RunDir(out).latest_resumable() is not None


def inject(work: Path, kills: int, steps: int, seed: int, min_s: float, max_s: float, log=print) -> dict:
    """Train a reference, then the same run killed `kills` times; compare. Returns a report dict."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    reference, faulty = work / "reference", work / "faulty"
    started = time.perf_counter()
    _run(_train_cmd(reference, steps, fresh=True), env)
    rng = random.Random(seed)
    kill_times = []
    for i in range(kills):
        fresh = not _resumable(faulty)
        delay = rng.uniform(min_s, max_s)
        outcome = _run(_train_cmd(faulty, steps, fresh=fresh, overwrite=fresh), env, kill_after=delay)
        kill_times.append(round(delay, 2))
        log(f"attempt {i + 1}: {'fresh' if fresh else 'resume'}, "
            f"{'killed after %.2f s' % delay if outcome is None else 'finished before the kill'}")
        if outcome is not None:
            break
    _run(_train_cmd(faulty, steps, fresh=not _resumable(faulty), overwrite=True), env)
    return {**compare_runs(reference, faulty), "kills": len(kill_times), "kill_after_s": kill_times,
            "wall_s": round(time.perf_counter() - started, 1)}


def compare_runs(a: Path, b: Path) -> dict:
    sys.path.insert(0, str(SRC))
    import torch
    from safetensors.torch import load_file

    from hybridlm.runs import RunDir

    wa = load_file(str(a / "checkpoints" / "final" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "final" / "model.safetensors"))
    differing = [k for k in wa if not torch.equal(wa[k], wb[k])]

    def losses(path: Path):
        return [(e["step"], e["loss"]) for e in RunDir(path).read_metrics() if e["event"] == "train"]

    return {"weights_equal": not differing and wa.keys() == wb.keys(), "differing_tensors": differing[:5],
            "losses_equal": losses(a) == losses(b), "logged_steps": len(losses(b))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-s", type=float, default=1.0, help="earliest kill after a start (s)")
    p.add_argument("--max-s", type=float, default=6.0, help="latest kill after a start (s)")
    p.add_argument("--work", help="directory for the two runs (default: a temporary one, removed)")
    args = p.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="hybridlm-faults-"))
    try:
        report = inject(work, args.kills, args.steps, args.seed, args.min_s, args.max_s)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(report)
    ok = report["weights_equal"] and report["losses_equal"]
    print("OK: the killed run equals the uninterrupted one" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
