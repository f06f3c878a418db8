"""Benchmark of the data pipeline on this machine: GPT-2 tokenisation of the embedded corpus, the
cache hit that follows, and TrainSampler throughput. Prints a markdown table.

    PYTHONPATH=src python bench/bench_data.py [--workers 1 2] [--repeat 1] [--batch-size 48] [--seq-len 1024]

Targets (issue 3): whole embedded corpus (~21 MB) tokenised in < 30 s on 2 cores; > 1000 batches/s of 48x1024.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
import warnings

import numpy as np
import tokenizers
import torch

from hybridlm.config.data_config import DataConfig
from hybridlm.data import TrainSampler, get_tokenizer, prepare_data


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_tokenize(workers: int, cache_dir: str) -> tuple[dict, float, float, float]:
    """Tokenise the whole embedded corpus into a fresh cache; then time the cache hit.
    Returns (manifest, wall seconds, CPU seconds, cache-hit seconds)."""
    cfg = DataConfig(source="embedded", tokenizer="gpt2", cache_dir=cache_dir, num_workers=workers)
    start, cpu = time.perf_counter(), cpu_seconds()
    data = prepare_data(cfg, progress=False)
    build, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    start = time.perf_counter()
    prepare_data(cfg, progress=False)
    hit = time.perf_counter() - start
    return data.manifest, build, cpu, hit


def bench_sampler(tokens: np.ndarray, batch_size: int, seq_len: int, seconds: float) -> tuple[float, int]:
    sampler = TrainSampler(tokens, batch_size=batch_size, seq_len=seq_len, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # epoch-end warnings: the benchmark runs many epochs
        for _ in range(20):
            sampler.next_batch()
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(100):
                sampler.next_batch()
            count += 100
        elapsed = time.perf_counter() - start
    return count / elapsed, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="num_workers values to time (1 = in-process, N > 1 = N worker processes)")
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0, help="sampler timing duration")
    parser.add_argument("--repeat", type=int, default=1, help="tokenisation runs per setting (best is reported)")
    args = parser.parse_args()

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical cores; load average before: {load_average()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"tokenizers {tokenizers.__version__}")
    get_tokenizer("gpt2")  # built once per process; not part of the timed tokenisation
    rows = []
    with tempfile.TemporaryDirectory(prefix="hybridlm-bench-") as cache_root:
        manifest, last_cache = None, ""
        for workers in args.workers:
            runs = []
            for repeat in range(args.repeat):
                last_cache = os.path.join(cache_root, f"w{workers}-r{repeat}")
                runs.append(bench_tokenize(workers, last_cache))
            manifest = runs[0][0]
            build, cpu, hit = min(r[1] for r in runs), min(r[2] for r in runs), max(r[3] for r in runs)
            megabytes = manifest["bytes"] / 1e6
            tokens = manifest["train_tokens"] + manifest["val_tokens"]
            best = f"best of {args.repeat}: " if args.repeat > 1 else ""
            rows.append((f"tokenise embedded corpus, gpt2, num_workers={workers}",
                         f"{best}{build:.1f} s, {megabytes / build:.2f} MB/s, {tokens / build / 1e6:.2f} M tokens/s "
                         f"({cpu:.1f} CPU s)", "< 30 s", "yes" if build < 30 else "NO"))
            rows.append((f"prepare_data cache hit (num_workers={workers} cache)", f"{hit * 1000:.0f} ms", "instant",
                         "yes" if hit < 1 else "NO"))
        train = prepare_data(DataConfig(source="embedded", cache_dir=last_cache), progress=False).train_tokens
        rate, count = bench_sampler(train, args.batch_size, args.seq_len, args.seconds)
        rows.append((f"TrainSampler.next_batch {args.batch_size}x{args.seq_len} (memmap, {len(train):,} tokens)",
                     f"{rate:,.0f} batches/s ({count} batches)", "> 1000", "yes" if rate > 1000 else "NO"))
    print(f"corpus: {manifest['bytes'] / 1e6:.1f} MB, {manifest['documents']} documents, "
          f"{manifest['train_tokens'] + manifest['val_tokens']:,} tokens; "
          f"load average after: {load_average()}\n")
    print("| measurement | result | target | met |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
