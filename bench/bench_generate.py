"""Generation speed: `hybridlm.model.decoder.Decoder` (what `hybridlm generate` runs), prefill and decoding.

    python bench/bench_generate.py --out OUTDIR                       # the issue's matrix, on a GPU (~30 min)
    python bench/bench_generate.py --presets h100_deltanet --windows none --batches 1 --prompts 512,32768
    python bench/bench_generate.py --device cpu --presets tiny --prompts 16 --batches 1 --new-tokens 8 --out /tmp/g
    python bench/bench_generate.py --plot OUTDIR/bench_generate.jsonl --plot-out docs/decode_vs_context.png

Random weights (speed does not depend on them; no eos, so every row makes all its tokens), bf16 on CUDA and
float32 on the CPU, kernels "auto", greedy unless `--sampling top_k` (temperature 0.8, top-k 50). Each row
builds one `Decoder`, makes one warm-up call (graph capture, FLA autotuning) and then a timed one, split
where `Decoder.generate` splits it: `start` (prefill: the prompts through the chunk kernels into the
preallocated cache, the first token sampled) and `decode` (the remaining steps). Reported: prefill ms,
decoding tokens/s (batch x (new - 1) / decode time) and ms per step, the peak memory of the timed call and of
its decoding part alone, and the cache's bytes. Rows: presets x windows (attention presets only; "none" is
full attention) x batches x prompt lengths x graphs, then one CPU row for `cpu_demo` (float32, eager).
A row that fails (out of memory, an error) is reported and the others go on; `--budget-s` skips the rows
left once that much time has passed. JSONL lines go to OUT/bench_generate.jsonl as rows finish, a markdown
table is printed last, and `--plot` draws tokens/s against prompt length (batch 1, one line per layout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

try:
    import hybridlm  # noqa: F401
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from hybridlm.config import resolve  # noqa: E402
from hybridlm.model import HybridLM  # noqa: E402
from hybridlm.model.decoder import Decoder  # noqa: E402
from hybridlm.model.sampling import Sampling  # noqa: E402

DEFAULT_PRESETS = "h100_deltanet,h100_hybrid_sparse,h100_transformer"
SAMPLINGS = {"greedy": Sampling(temperature=0), "top_k": Sampling(temperature=0.8, top_k=50)}
CPU_ROW = {"preset": "cpu_demo", "window": "none", "batch": 1, "prompt": 128, "new_tokens": 64, "graphs": False}


def build_model(preset: str, window: str, device: torch.device) -> HybridLM:
    values = {"model.kernels": "auto" if device.type == "cuda" else "torch"}
    config = resolve(preset=preset, values=values)
    if config.model.attention_layer_set:
        values["model.attention.window_size"] = None if window == "none" else int(window)
    config = resolve(preset=preset, values=values)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return HybridLM(config.model).to(device=device, dtype=dtype).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def time_row(model: HybridLM, batch: int, prompt: int, new_tokens: int, graphs: bool, sampling: Sampling,
             device: torch.device) -> dict:
    decoder = Decoder(model, cuda_graphs=graphs)
    gen = torch.Generator().manual_seed(prompt + batch)
    prompts = torch.randint(0, model.config.vocab_size, (batch, prompt), generator=gen).tolist()
    started = time.perf_counter()
    decoder.decode(decoder.start(prompts, new_tokens, sampling, seed=0), new_tokens)  # warm-up (and capture)
    sync(device)
    first_call_s = time.perf_counter() - started
    reset_peak(device)
    t0 = time.perf_counter()
    run = decoder.start(prompts, new_tokens, sampling, seed=0)
    sync(device)
    t1 = time.perf_counter()
    prefill_peak = peak_gb(device)
    reset_peak(device)
    out = decoder.decode(run, new_tokens)
    sync(device)
    t2 = time.perf_counter()
    steps = out.shape[1] - 1
    decode_s = t2 - t1
    row = {"prefill_ms": (t1 - t0) * 1e3, "decode_tokens_per_s": batch * steps / decode_s if steps else None,
           "ms_per_step": decode_s / steps * 1e3 if steps else None, "peak_gb": _max(prefill_peak, peak_gb(device)),
           "decode_peak_gb": peak_gb(device), "cache_gb": run.slot.cache.nbytes() / 1e9,
           "first_call_s": first_call_s, "tokens": int(out.numel())}
    del decoder, run, out
    return row


def _max(a, b):
    return None if a is None or b is None else max(a, b)


def rows_to_run(args, device: torch.device) -> list[dict]:
    graph_modes = args.graphs.split(",") if device.type == "cuda" else ["off"]
    rows = []
    for preset in args.presets.split(","):
        attention = bool(resolve(preset=preset).model.attention_layer_set)
        for window in (args.windows.split(",") if attention else ["-"]):
            for batch in (int(b) for b in args.batches.split(",")):
                for prompt in (int(p) for p in args.prompts.split(",")):
                    for graphs in graph_modes:
                        rows.append({"preset": preset, "window": window, "batch": batch, "prompt": prompt,
                                     "new_tokens": args.new_tokens, "graphs": graphs == "on"})
    return rows


def run_rows(rows: list[dict], device: torch.device, sampling_name: str, out: Path, budget_s: float) -> list[dict]:
    results, started, model, built = [], time.perf_counter(), None, None
    for row in rows:
        row_device = torch.device("cpu") if row.get("cpu_row") else device
        row = {**row, "device": row_device.type, "sampling": sampling_name}
        if time.perf_counter() - started > budget_s:
            row["error"] = "skipped: time budget"
        else:
            try:
                key = (row["preset"], row["window"], row_device)
                if built != key:
                    model = None
                    _empty_cache(device)
                    model, built = build_model(row["preset"], row["window"], row_device), key
                row.update(layout=model.config.layout_string, dtype=str(model.lm_head.weight.dtype)[6:],
                           kernels=model.kernels.names["gdn_step"])
                row.update(time_row(model, row["batch"], row["prompt"], row["new_tokens"], row["graphs"],
                                    SAMPLINGS[sampling_name], row_device))
            except Exception as exc:  # noqa: BLE001 - report the row, go on with the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                traceback.print_exc()
        _empty_cache(device)
        results.append(row)
        print(json.dumps(row), flush=True)
        with open(out / "bench_generate.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
    return results


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def markdown(results: list[dict]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| preset | layout | window | batch | prompt | graphs | device | prefill ms | tokens/s | ms/step | "
             "peak GB | decode peak GB | cache GB |",
             "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        head = (f"| {r['preset']} | {r.get('layout', '-')} | {r['window']} | {r['batch']} | {r['prompt']} | "
                f"{'on' if r['graphs'] else 'off'} | {r['device']} |")
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | | | |")
        else:
            lines.append(f"{head} {fmt(r['prefill_ms'], '.1f')} | {fmt(r['decode_tokens_per_s'], ',.0f')} | "
                         f"{fmt(r['ms_per_step'], '.2f')} | {fmt(r['peak_gb'], '.2f')} | "
                         f"{fmt(r['decode_peak_gb'], '.2f')} | {r['cache_gb']:.3f} |")
    return "\n".join(lines)


def plot(jsonl: Path, png: Path, batch: int = 1) -> Path:
    """Decoding tokens/s against prompt length at `batch`, one line per (preset, window), the fastest of
    graphs on / off at each point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[tuple, dict] = {}  # a later line (a rerun) replaces an earlier one
    for line in jsonl.read_text().splitlines():
        r = json.loads(line)
        if r.get("batch") == batch and r.get("decode_tokens_per_s") is not None and not r.get("cpu_row"):
            latest[(r["preset"], r["window"], r["prompt"], r["graphs"])] = r
    best: dict[str, dict[int, float]] = {}
    for r in latest.values():
        name = r["preset"] + ("" if r["window"] in ("-", None) else f", window {r['window']}")
        curve = best.setdefault(name, {})
        curve[r["prompt"]] = max(curve.get(r["prompt"], 0.0), r["decode_tokens_per_s"])
    if not best:
        raise SystemExit(f"{jsonl} holds no batch-{batch} rows with a speed to plot")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in sorted(best.items()):
        lengths = sorted(curve)
        ax.plot(lengths, [curve[n] for n in lengths], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)  # from zero: a flat curve must look flat
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel(f"decoding tokens/s (batch {batch})")
    ax.set_title("Decoding speed against context length")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=DEFAULT_PRESETS)
    p.add_argument("--windows", default="none,2048", help="for presets with attention: none (full) or a size")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--prompts", default="512,4096,32768", help="prompt lengths")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--graphs", default="on,off", help="CUDA graphs: on, off or both (off on a CPU)")
    p.add_argument("--sampling", choices=sorted(SAMPLINGS), default="greedy")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-cpu-row", action="store_true", help="leave out the closing cpu_demo row on the CPU")
    p.add_argument("--budget-s", type=float, default=1e9, help="skip the rows left once this much time has passed")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_generate"))
    p.add_argument("--plot", type=Path, help="only draw the plot from this JSONL (no benchmark)")
    p.add_argument("--plot-out", type=Path, default=Path("docs/decode_vs_context.png"))
    args = p.parse_args(argv)
    if args.plot:
        print(f"wrote {plot(args.plot, args.plot_out)}")
        return
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = rows_to_run(args, device)
    if not args.no_cpu_row:
        rows.append({**CPU_ROW, "cpu_row": True})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {len(rows)} rows, random weights", flush=True)
    results = run_rows(rows, device, args.sampling, args.out, args.budget_s)
    try:
        print(f"plot: {plot(args.out / 'bench_generate.jsonl', args.out / 'decode_vs_context.png')}")
    except SystemExit as exc:  # no batch-1 speeds in this run
        print(exc)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
