"""GPU training numbers: the seed-style FLA baseline against our trainer, plus a profile.

Run on a CUDA machine with FLA installed (see docs/gpu-verification.md for the exact command):

    python bench/bench_gpu_train.py --out OUTDIR [--steps 300] [--baseline-steps 30] [--skip-train]

1. Seed-style baseline: FLA's `GatedDeltaNetForCausalLM` built as the reference scripts build it
   (768 x 12 layers x 12 heads, FLA's default head_dim 256, expand_v 1, MLP 3072), weights cast to
   bf16, plain AdamW, FLA's fused cross-entropy, batch 48 x 1024 — on the same batches as ours.
2. Our trainer (`hybridlm.train`) on `h100_deltanet` and `h100_hybrid_sparse` for --steps steps.
3. A torch.profiler breakdown of a few of our training steps (top ops by CUDA time).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch


def build_baseline_step(vocab: int, batches):
    """The seed's loop: FLA's GatedDeltaNetForCausalLM, weights cast to bf16, plain AdamW."""
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = GatedDeltaNetConfig(hidden_size=768, num_hidden_layers=12, num_heads=12, hidden_ratio=4,
                                     intermediate_size=3072, vocab_size=vocab, expand_v=1)
        model = GatedDeltaNetForCausalLM(config).cuda().to(torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    counter = iter(range(1 << 30))

    def step() -> torch.Tensor:
        batch = batches[next(counter) % len(batches)].cuda(non_blocking=True)
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, sum(p.numel() for p in model.parameters())


def time_steps(step, steps: int, tokens_per_step: int, warmup: int = 5) -> dict:
    """Median step time after `warmup` steps (the first ones include Triton autotuning and TileLang builds)."""
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = sorted(times[warmup:])[len(times[warmup:]) // 2]
    return {"ms_per_step": steady * 1e3, "tokens_per_s": tokens_per_step / steady, "first_step_s": times[0],
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9, "final_loss": loss.item()}


def profile(step, name: str, out: Path, steps: int = 3) -> str:
    """Top CUDA kernels of `steps` already-warm steps, by total CUDA time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    (out / f"profile_{name}.txt").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--baseline-steps", type=int, default=30)
    parser.add_argument("--presets", default="h100_deltanet,h100_hybrid_sparse")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/gpu-runs"),
                        help="where the training runs (with multi-GB checkpoints) go; --out gets the summaries")
    parser.add_argument("--traceback-every", type=float, default=90.0,
                        help="dump every thread's stack every N seconds (locates a stuck first step)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(args.traceback_every, repeat=True, file=sys.stderr)

    from hybridlm.config import preset
    from hybridlm.data import TrainSampler, prepare_data
    from hybridlm.train import train

    base = preset("h100_deltanet")
    t0 = time.perf_counter()
    data = prepare_data(base.data, progress=False)
    print(f"data ready in {time.perf_counter() - t0:.0f} s: {len(data.train_tokens):,} train tokens", flush=True)
    sampler = TrainSampler(data.train_tokens, 48, 1024, seed=base.data.seed)
    batches = [sampler.next_batch() for _ in range(8)]
    summary: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}

    tokens = 48 * 1024
    step, params = build_baseline_step(data.tokenizer.vocab_size, batches)
    summary["seed_baseline"] = {"params": params, **time_steps(step, args.baseline_steps, tokens)}
    print("seed baseline:", json.dumps(summary["seed_baseline"]), flush=True)
    print(profile(step, "seed_baseline", args.out), flush=True)
    del step
    torch.cuda.empty_cache()

    from gpu_step_probe import build_step  # bench/ is on sys.path when this script runs

    for name in args.presets.split(","):
        step, _ = build_step(name, batches=batches)  # the baseline's batches: comparable losses
        summary[f"step_{name}"] = time_steps(step, args.baseline_steps, tokens)
        print(f"hybridlm step {name}:", json.dumps(summary[f"step_{name}"]), flush=True)
        print(profile(step, name, args.out), flush=True)
        del step
        torch.cuda.empty_cache()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))

    if not args.skip_train:
        for name in args.presets.split(","):
            config = preset(name)
            config.train.max_steps = args.steps
            config.train.save_interval = 10 * args.steps
            config.train.eval_interval = max(args.steps // 2, 1)
            config.train.eval_batches = 5
            config.train.log_interval = 10
            torch.cuda.reset_peak_memory_stats()
            results = None
            try:
                results = train(config, out=args.runs_dir / name, progress=False)
            except torch.OutOfMemoryError:
                print(f"{name}: out of memory at batch 48; retrying as 2 x 24 (grad_accum 2)", flush=True)
            if results is None:  # retried outside the handler so the failed attempt's tensors are freed
                import gc

                gc.collect()
                torch.cuda.empty_cache()
                config.train.batch_size, config.train.grad_accum = 24, 2
                results = train(config, out=args.runs_dir / f"{name}_accum2", progress=False)
            r = results["results"]
            summary[name] = {k: r[k] for k in ("best_val_loss", "final_val_loss", "final_val_accuracy",
                                               "tokens_per_s", "tokens_per_s_steady", "mfu", "train_time_s", "total_time_s")}
            summary[name]["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            summary[name]["params"] = results["model"]["params_total"]
            print(name, json.dumps(summary[name]), flush=True)
            import shutil

            for kept in ("metrics.jsonl", "results.json", "training_curves.png"):
                run_dir = args.runs_dir / (name if (args.runs_dir / name / "results.json").exists() else f"{name}_accum2")
                if (run_dir / kept).exists():
                    shutil.copy(run_dir / kept, args.out / f"{name}_{kept}")

    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| run | params | tokens/s | ms/step (48x1024) | peak GB | best val loss |")
    print("|---|---:|---:|---:|---:|---:|")
    b = summary["seed_baseline"]
    print(f"| seed baseline (FLA model, bf16 weights) | {b['params'] / 1e6:.1f}M | {b['tokens_per_s']:,.0f} | "
          f"{b['ms_per_step']:.0f} | {b['peak_mem_gb']:.1f} | - |")
    for name in args.presets.split(","):
        s = summary[f"step_{name}"]
        print(f"| hybridlm {name}, bare step loop | - | {s['tokens_per_s']:,.0f} | {s['ms_per_step']:.0f} | "
              f"{s['peak_mem_gb']:.1f} | - |")
    for name in args.presets.split(","):
        if name in summary:
            s = summary[name]
            print(f"| hybridlm {name}, trainer (steady) | {s['params'] / 1e6:.1f}M | {s['tokens_per_s_steady']:,.0f} | "
                  f"{48 * 1024 / s['tokens_per_s_steady'] * 1e3:.0f} | {s['peak_mem_gb']:.1f} | "
                  f"{s['best_val_loss']:.4f} |")


if __name__ == "__main__":
    main()
