"""Benchmark benchmark-scoring speed: ARC-Challenge documents per second through `hybridlm.evaluation`.

Why: `hybridlm eval` should score the full ARC-Challenge test set (1,172 questions, 4,687 answers) of a
small model in well under a minute on a laptop CPU, and be input-bound, not scorer-bound, on a GPU.
Times the whole path -- prompt building, lm-eval-style tokenisation, batched scoring, metrics -- with a
`tiny`-preset-shaped model (random weights, GPT-2 tokenizer, so a 50,257-token head), or a trained run.

    python bench/bench_eval.py                                   # shipped 40-question subset, CPU
    python bench/bench_eval.py --data-dir /path/to/eval --limit 400
    python bench/bench_eval.py --device cuda --batch-size 64     # GPU
    python bench/bench_eval.py --run runs/tiny                   # a trained run instead
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

try:
    import hybridlm  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from hybridlm.evaluation import evaluate  # noqa: E402


def build_model(args: argparse.Namespace):
    """(model, tokenizer, description) from --run, else the tiny preset's shape with GPT-2's vocabulary."""
    if args.run:
        from hybridlm.runs import load_run

        model, tokenizer = load_run(args.run, checkpoint=args.checkpoint, device=args.device)
        return model, tokenizer, f"run {args.run} ({args.checkpoint})"
    from hybridlm.config import preset
    from hybridlm.data import get_tokenizer
    from hybridlm.model import HybridLM

    tokenizer = get_tokenizer("gpt2")
    config = preset("tiny").model
    config.vocab_size = tokenizer.vocab_size
    if args.device == "cpu":
        config.kernels = "torch"
    torch.manual_seed(0)
    model = HybridLM(config).to(args.device).eval()
    return model, tokenizer, (f"tiny preset shape ({config.layout_string}, hidden {config.hidden_size}, "
                              f"vocab {config.vocab_size}, {model.num_parameters() / 1e6:.2f}M params), random init")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="builtin-subsets", help="eval data directory (default: shipped subset)")
    parser.add_argument("--limit", type=int, default=None, help="first N questions (default: all in the file)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--run", default=None, help="benchmark a trained run instead of the random tiny model")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (the median is reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, description = build_model(args)

    def one_pass() -> tuple[float, dict]:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = evaluate(model, tokenizer, "arc_challenge", limit=args.limit, batch_size=args.batch_size,
                          data_dir=args.data_dir, use_hub=False, keep_samples=True)["tasks"]["arc_challenge"]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - started, result

    one_pass()  # warm-up: file reading, allocator, kernels
    timings, result = [], {}
    for _ in range(args.repeats):
        seconds, result = one_pass()
        timings.append(seconds)
    seconds = statistics.median(timings)
    docs = result["count"]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"model: {description}")
    print(f"data: {result['source']} ({docs} questions), batch {args.batch_size}, device {args.device} "
          f"({device_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print()
    print("| questions | seconds | questions/s | answers/s | acc | acc_norm |")
    print("|---:|---:|---:|---:|---:|---:|")
    answers = sum(len(sample["loglikelihoods"]) for sample in result["samples"])
    print(f"| {docs} | {seconds:.2f} | {docs / seconds:.1f} | {answers / seconds:.0f} | "
          f"{result['metrics']['acc']:.4f} | {result['metrics']['acc_norm']:.4f} |")


if __name__ == "__main__":
    main()
