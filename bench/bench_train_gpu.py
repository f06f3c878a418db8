"""GPU training speed, one process, one table: the anchors and hybridlm's own `train_step`.

    python bench/bench_train_gpu.py --rows baseline,reference,h100_deltanet,h100_hybrid_sparse,h100_transformer \
        --shapes 48x1024,12x4096,3x16384 --modes eager,compiled --out OUTDIR

Rows:
- `baseline`: the seed's loop, FLA's `GatedDeltaNetForCausalLM` (pure GDN, 768 x 12 x 12, head_dim 256,
  MLP 3072) with bf16 weights and plain AdamW (FLA's hybrids need flash-attn, not available there);
- `reference`: a plain PyTorch transformer of the reference shape, compiled (bench/reference_transformer.py);
- a preset name: hybridlm built by `build_training` (the trainer's own setup: kernel record, per-block
  compile when the mode is `compiled`, fused AdamW) and stepped by `train_step`, the trainer's step;
- `PRESET@op` (eager): the same, with the GDN training call through the `hybridlm::gdn_chunk` custom op
  (what compiled blocks call) instead of FLA's own `chunk_gated_delta_rule`: the custom op's cost.
Each row reports the median step after warm-up, tokens/s, MFU (989 TFLOP/s bf16 peak), peak memory and
the first step's time (compilation and autotuning). Random tokens, vocabulary 50257 (GPT-2, the presets').
A row that fails (out of memory, an error) is reported and the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_transformer

PEAK = 989e12
VOCAB = 50257


def time_steps(step, steps: int, warmup: int) -> dict:
    """First step (cold), then `warmup` more, then the median of `steps` timed steps."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        result = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"ms": sorted(times)[len(times) // 2] * 1e3, "first_step_s": first,
            "peak_gb": torch.cuda.max_memory_allocated() / 1e9, "loss": float(result.loss)}


def profile(step, path: Path, steps: int = 3) -> None:
    """The top CUDA kernels of `steps` warm steps, by total CUDA time (what bounds the step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    path.write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=80))


def batches(batch: int, seq: int, count: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * seq)
    return [torch.randint(0, VOCAB, (batch, seq + 1), generator=gen).pin_memory() for _ in range(count)]


def stepper(forward, model, optimizer, precision, guard, data):
    from hybridlm.train.step import train_step

    counter = iter(range(1 << 30))

    def step():
        return train_step(forward, model, optimizer, [data[next(counter) % len(data)]], precision, 1.0, guard)

    return step


def build_row(name: str, batch: int, seq: int, compiled: bool | str, window: int | None):
    """(step function, flops per token, parameter count) of one row."""
    from hybridlm.config import resolve
    from hybridlm.model.accounting import flops_per_token
    from hybridlm.train.nonfinite import NonFiniteGuard
    from hybridlm.train.precision import Precision, resolve_precision
    from hybridlm.train.setup import build_training

    device = torch.device("cuda")
    precision = resolve_precision("bf16", device)
    guard = NonFiniteGuard("stop", 10, device)
    data = batches(batch, seq)
    transformer = resolve(preset="h100_transformer", values={"model.vocab_size": VOCAB, "data.seq_len": seq})
    if name == "baseline":
        from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(
                hidden_size=768, num_hidden_layers=12, num_heads=12, hidden_ratio=4, intermediate_size=3072,
                vocab_size=VOCAB, expand_v=1)).cuda().to(torch.bfloat16)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        pure = Precision(device, "bf16-pure", torch.bfloat16)  # the seed: bf16 weights, no autocast

        def forward(inputs, labels):  # FLA's model shifts the labels itself
            return model(input_ids=inputs, labels=inputs).loss

        config = resolve(preset="h100_deltanet", values={"model.vocab_size": VOCAB, "data.seq_len": seq})
        return (stepper(forward, model, optimizer, pure, guard, data), flops_per_token(config.model, seq),
                sum(p.numel() for p in model.parameters()))
    if name == "reference":
        from reference_transformer import ReferenceTransformer

        model = ReferenceTransformer(VOCAB).cuda()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
        forward = torch.compile(model) if compiled else model
        return (stepper(forward, model, optimizer, precision, guard, data), flops_per_token(transformer.model, seq),
                sum(p.numel() for p in model.parameters()))
    values = {"model.vocab_size": VOCAB, "data.seq_len": seq, "train.batch_size": batch, "train.compile": compiled}
    if window is not None:
        values["model.attention.window_size"] = window if window > 0 else None
    name, _, variant = name.partition("@")
    config = resolve(preset=name, values=values)
    torch.manual_seed(0)
    parts = build_training(config, precision)
    if variant == "op":
        from dataclasses import replace

        from hybridlm.model import fused

        parts.model.use_kernels(replace(parts.model.kernels, gdn_train=fused.gdn_train_op))
    elif variant:
        raise ValueError(f"unknown row variant {variant!r}")
    return (stepper(parts.forward, parts.model, parts.optimizer, precision, parts.guard, data),
            flops_per_token(config.model, seq), sum(p.numel() for p in parts.model.parameters()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="baseline,reference,h100_deltanet,h100_hybrid_sparse,h100_transformer")
    p.add_argument("--shapes", default="48x1024")
    p.add_argument("--modes", default="eager,compiled",
                   help="eager (train.compile=false), compiled (true: every block), auto (the default policy)")
    p.add_argument("--window", type=int, default=None, help="override the presets' window (0: full attention)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("/tmp/bench"))
    p.add_argument("--profile", action="store_true", help="write OUT/profile_ROW_SHAPE_MODE.txt for each row")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip the rows left once this much time has passed")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    print(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    for shape in args.shapes.split(","):
        batch, seq = (int(n) for n in shape.split("x"))
        for name in args.rows.split(","):
            for mode in args.modes.split(","):
                if (name == "baseline" or "@" in name) and mode != "eager":
                    continue  # the seed never compiled; the A/B variants are eager rows
                if name == "reference" and mode != "compiled":
                    continue  # the anchor is the compiled one
                row = {"row": name, "shape": shape, "mode": mode, "window": args.window}
                if time.perf_counter() - started > args.budget_s:
                    row["error"] = "skipped: time budget"
                    results.append(row)
                    continue
                step = None
                try:
                    compile_setting = {"eager": False, "compiled": True, "auto": "auto"}[mode]
                    step, fpt, params = build_row(name, batch, seq, compile_setting, args.window)
                    timing = time_steps(step, args.steps, args.warmup)
                    tps = batch * seq / (timing["ms"] / 1e3)
                    row.update(timing, tokens_per_s=tps, mfu=tps * fpt / PEAK, params=params)
                    if args.profile:
                        profile(step, args.out / f"profile_{name}_{shape}_{mode}.txt")
                except Exception as exc:  # noqa: BLE001 - report the row, go on with the others
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                    traceback.print_exc()
                del step
                torch.cuda.empty_cache()
                results.append(row)
                print(json.dumps(row), flush=True)
                with open(args.out / "bench.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| row | shape | mode | ms/step | tokens/s | MFU | peak GB | first step s |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['row']} | {r['shape']} | {r['mode']} | {r['error']} | | | | |")
        else:
            print(f"| {r['row']} | {r['shape']} | {r['mode']} | {r['ms']:.1f} | {r['tokens_per_s'] / 1e3:,.1f}K | "
                  f"{100 * r['mfu']:.1f} % | {r['peak_gb']:.1f} | {r['first_step_s']:.1f} |")


if __name__ == "__main__":
    main()
