"""Per-member overhead of a sweep: each member's wall time minus its own training time, from the sweep's records.

    python bench/bench_sweep.py                              # 4-member tiny sweep, 20 steps, on the CPU
    python bench/bench_sweep.py --out /tmp/b -- --layouts exp7 --steps 30 --devices cuda:0   # any sweep arch

The sweep runs as `python -m hybridlm sweep arch ...` in its own process (its start counts in the total).
Overhead is what a member costs beyond the trainer's `train_time_s`: process start and imports (a new
worker's, shown apart), data, model build, evaluations, checkpoints, results and plots. Sweeps from
before warm workers recorded only `wall_s`; their overhead is computed the same way from results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DEFAULT = ["--preset", "tiny", "--layouts", "GG,GA,AG,AA", "--steps", "20", "--devices", "cpu"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-sweep"))
    parser.add_argument("sweep_args", nargs="*", help="after --: arguments of `hybridlm sweep arch` (default: "
                                                       + " ".join(DEFAULT) + ")")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    command = [sys.executable, "-m", "hybridlm", "sweep", "arch", *(args.sweep_args or DEFAULT), "--no-progress",
               "--out", str(args.out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    total = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"sweep failed ({done.returncode}):\n{done.stderr[-3000:]}")

    from hybridlm.reports import format_table

    rows, overheads = [], []
    for m in json.loads((args.out / "sweep.json").read_text())["members"]:
        results = json.loads((args.out / m["name"] / "results.json").read_text())["results"]
        t = m.get("timing") or {"wall_s": m["wall_s"], "train_s": results["train_time_s"], "worker_start_s": 0.0,
                                "overhead_s": m["wall_s"] - results["train_time_s"], "process": "own process"}
        overheads.append(t["overhead_s"])
        rows.append([m["name"], f"{t['wall_s']:.2f}", f"{t.get('worker_start_s') or 0:.2f}", f"{t['train_s']:.2f}",
                     f"{t['overhead_s']:.2f}", t["process"]])
    print(format_table(["member", "wall s", "waited for worker s", "training s", "overhead s", "process"], rows,
                       align="lrrrrl"))
    trained = sum(float(r[3]) for r in rows)
    print(f"\nsweep: {total:.1f} s wall for {len(rows)} members, {trained:.1f} s of it training; overhead per member "
          f"{sum(overheads) / len(overheads):.2f} s mean, {max(overheads):.2f} s max "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
