"""Benchmark the gated delta rule op: chunked vs recurrent (and FLA on CUDA), forward and forward+backward.

Why: the chunked path is what training uses, so it must beat the step-by-step recurrence by a wide
margin (the target is >= 5x for forward+backward at T=1024 on CPU). Prints a markdown table.

    python bench/bench_ops.py                 # CPU, B=4 T=1024 H=4 K=V=64 float32
    python bench/bench_ops.py --device cuda   # adds FLA's kernels when usable
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

try:
    import hybridlm  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from hybridlm.ops import available_backends, gated_delta_rule  # noqa: E402


def make_inputs(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Realistic inputs: unit-norm keys, decays in (-inf, 0), betas in (0, 1)."""
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.seq_len, args.heads)

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, generator=gen)

    tensors = {
        "q": rand(*shape, args.head_dim),
        "k": F.normalize(rand(*shape, args.head_dim), dim=-1),
        "v": rand(*shape, args.head_dim),
        "g": F.logsigmoid(rand(*shape) + 4.0),
        "beta": torch.sigmoid(rand(*shape)),
    }
    return {name: t.to(device=device, dtype=dtype) for name, t in tensors.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def variant_steps(inputs: dict[str, torch.Tensor], backend: str, mode: str) -> tuple[Callable[[], None], ...]:
    """(forward under no_grad, forward+backward) closures for one backend/mode.

    Backward is seeded with a fixed output gradient so only the op is timed, not a loss.
    """
    leaves = {name: t.detach().requires_grad_(True) for name, t in inputs.items()}
    grad_out = torch.randn_like(inputs["v"])

    def forward() -> None:
        with torch.no_grad():
            gated_delta_rule(**inputs, backend=backend, mode=mode)

    def forward_backward() -> None:
        for t in leaves.values():
            t.grad = None
        o, _ = gated_delta_rule(**leaves, backend=backend, mode=mode)
        o.backward(grad_out)

    return forward, forward_backward


def median_ms_interleaved(steps: list[Callable[[], None]], repeats: int, device: torch.device) -> list[float]:
    """Median wall time (ms) of each step; steps alternate within each repeat so background load
    on a shared machine hits all of them alike. One warm-up round first."""
    times: list[list[float]] = [[] for _ in steps]
    for round_index in range(repeats + 1):
        for step, step_times in zip(steps, times):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            if round_index > 0:
                step_times.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(step_times) for step_times in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    device = torch.device(args.device)
    inputs = make_inputs(args, device, getattr(torch, args.dtype))
    variants = [("torch", "recurrent"), ("torch", "chunk")]
    if available_backends(device)["fla"][0]:
        variants.append(("fla", "chunk"))

    print(
        f"B={args.batch} T={args.seq_len} H={args.heads} K=V={args.head_dim} {args.dtype} on {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n"
    )
    print("| backend | mode | forward ms | fwd+bwd ms | fwd speedup | fwd+bwd speedup |")
    print("|---|---|---:|---:|---:|---:|")
    steps = [step for backend, mode in variants for step in variant_steps(inputs, backend, mode)]
    medians = median_ms_interleaved(steps, args.repeats, device)
    base_fwd, base_fwd_bwd = medians[0], medians[1]
    for index, (backend, mode) in enumerate(variants):
        fwd, fwd_bwd = medians[2 * index], medians[2 * index + 1]
        print(
            f"| {backend} | {mode} | {fwd:.1f} | {fwd_bwd:.1f} | "
            f"{base_fwd / fwd:.1f}x | {base_fwd_bwd / fwd_bwd:.1f}x |"
        )


if __name__ == "__main__":
    main()
