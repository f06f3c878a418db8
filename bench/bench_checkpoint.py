"""What checkpoint checksums cost: `save_checkpoint` with and without manifest.json, and `verify_checkpoint`.

The model is ~300M float32 parameters of plain nn.Linear layers on CPU, with AdamW state after one
optimizer step (so a checkpoint holds ~3.6 GB: weights plus two moment buffers).

    python bench/bench_checkpoint.py [--out /tmp/bench-checkpoint] [--repeats 3] [--layers 18] [--width 4096]

Each repeat runs every variant once, interleaved (the order rotates), each into a fresh directory; dirty
pages are flushed (os.sync, untimed) before every timed call so no variant pays for another's write-back.
One untimed round of every variant first warms the page cache and the allocator. Reported: the median of
the repeats. Variants:
  stock safetensors   what save_checkpoint did before manifests (safetensors' save_model / save_file)
  manifest off        save_checkpoint(..., checksums=False): the streaming writer, no hashing
  manifest on         save_checkpoint(...): hashes on a background thread while writing (the default)
  manifest on, inline the same, hashing on the writing thread
  read back after     manifest off, then hashing the written files read back from the page cache
  verify              verify_checkpoint on a checkpoint this process has not hashed (files in page cache)
  finite check        first_non_finite over the state dict (part of every save above)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import torch
from torch import nn


def stock_save(path: Path, model: nn.Module, optimizer, trainer_state: dict) -> None:
    """The pre-manifest save path, for reference: safetensors' writers, temporary directory, rename."""
    from safetensors.torch import save_file, save_model

    from hybridlm.runs import checkpoint as ckpt

    tmp = path.parent / f".tmp-{path.name}"
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / ckpt.MODEL_FILE))
    tensors, meta = ckpt._optimizer_to_flat(optimizer)
    save_file(tensors, str(tmp / ckpt.OPTIMIZER_TENSORS))
    (tmp / ckpt.OPTIMIZER_META).write_text(json.dumps(meta))
    save_file(ckpt._rng_tensors(), str(tmp / ckpt.RNG_FILE))
    (tmp / ckpt.TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-checkpoint"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--width", type=int, default=4096)
    args = parser.parse_args()

    from hybridlm.runs import checkpoint as ckpt
    from hybridlm.runs import integrity

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)])
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.randn(2, args.width)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    trainer_state = {"step": 1, "best_val_loss": float("inf")}

    def with_thread(flag: bool):
        def run(path: Path) -> None:
            integrity._HASH_ON_THREAD = flag
            try:
                ckpt.save_checkpoint(path, model, optimizer, trainer_state)
            finally:
                integrity._HASH_ON_THREAD = True
        return run

    def read_back(path: Path) -> None:
        ckpt.save_checkpoint(path, model, optimizer, trainer_state, checksums=False)
        integrity._hash_files(sorted(path.iterdir()))

    variants = {
        "stock safetensors": lambda path: stock_save(path, model, optimizer, trainer_state),
        "manifest off": lambda path: ckpt.save_checkpoint(path, model, optimizer, trainer_state, checksums=False),
        "manifest on": with_thread(True),
        "manifest on, inline": with_thread(False),
        "read back after writing": read_back,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    verify_times, finite_times = [], []
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    size = 0
    for repeat in range(-1, args.repeats):  # repeat -1: an untimed warm-up of every variant
        names = list(variants)
        shift = max(repeat, 0) % len(names)  # rotate the order each repeat: no variant always runs first
        for name in names[shift:] + names[:shift]:
            save = variants[name]
            path = args.out / f"ckpt{names.index(name)}"
            shutil.rmtree(path, ignore_errors=True)
            os.sync()
            started = time.perf_counter()
            save(path)
            elapsed = time.perf_counter() - started
            if repeat >= 0:
                times[name].append(elapsed)
            size = sum(f.stat().st_size for f in path.iterdir())
        if repeat < 0:
            continue
        target = args.out / f"ckpt{list(variants).index('manifest on')}"
        ckpt.forget_verified()
        started = time.perf_counter()
        ckpt.verify_checkpoint(target)
        verify_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert ckpt.first_non_finite(model.state_dict().items()) is None
        finite_times.append(time.perf_counter() - started)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items())
              + f", verify {verify_times[-1]:.2f}s (load average {os.getloadavg()[0]:.1f})", flush=True)
    shutil.rmtree(args.out, ignore_errors=True)

    base = statistics.median(times["manifest off"])
    print(f"\n{params / 1e6:.1f}M float32 parameters + AdamW state, checkpoint {size / 1e9:.2f} GB in {args.out}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| variant | median s | all runs s | vs manifest off |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"| {name} | {median:.2f} | {runs} | {100 * (median / base - 1):+.1f} % |")
    verify = statistics.median(verify_times)
    print(f"| verify_checkpoint | {verify:.2f} | {', '.join(f'{v:.2f}' for v in verify_times)} | "
          f"{size / verify / 1e9:.1f} GB/s |")
    finite = statistics.median(finite_times)
    print(f"| finite check (in every save) | {finite:.2f} | {', '.join(f'{v:.2f}' for v in finite_times)} | "
          f"{100 * finite / base:.1f} % of a save |")


if __name__ == "__main__":
    main()
