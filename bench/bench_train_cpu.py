"""CPU training throughput of the small presets, through the real trainer (data, eval and checkpoints
included in wall time; tokens/s counts training steps only).

    python bench/bench_train_cpu.py [--presets tiny,cpu_demo] [--steps 100] [--out /tmp/bench-train]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="tiny,cpu_demo")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-train"))
    args = parser.parse_args()

    from hybridlm.config import preset
    from hybridlm.reports import format_table
    from hybridlm.train import train

    rows = []
    for name in args.presets.split(","):
        config = preset(name)
        config.train.max_steps = args.steps
        config.train.eval_interval = args.steps
        config.train.save_interval = args.steps
        out = args.out / name
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        results = train(config, out=out, progress=False)
        wall = time.perf_counter() - started
        r = results["results"]
        tokens_per_step = config.train.batch_size * config.data.seq_len
        rows.append([name, f"{results['model']['params_total']:,}", f"{config.train.batch_size}x{config.data.seq_len}",
                     args.steps, f"{r['tokens_per_s']:,.0f}", f"{tokens_per_step / r['tokens_per_s'] * 1e3:.0f}",
                     f"{wall:.1f}"])
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads")
    print(format_table(["preset", "params", "batch", "steps", "train tokens/s", "ms/step", "wall s"], rows))


if __name__ == "__main__":
    main()
