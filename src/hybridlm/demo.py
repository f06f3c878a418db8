"""The README demo: train the `cpu_demo` hybrid, then show its results, plots and a sample."""

from __future__ import annotations

from pathlib import Path

from hybridlm.config import preset, resolve
from hybridlm.runs.writer import holds_run


def run_demo(out: str = "runs/cpu_demo", steps: int | None = None, progress: bool | None = None) -> dict:
    from hybridlm.generate import stream_text
    from hybridlm.reports import print_results
    from hybridlm.train import train

    config = preset("cpu_demo")
    if steps is not None:
        config = resolve(base=config, values={"train.max_steps": steps,
                                              "train.eval_interval": min(config.train.eval_interval, steps),
                                              "train.save_interval": min(config.train.save_interval, steps)})
    out = _free_directory(Path(out))
    print(f"Training {config.run.name}: {config.run.description}")
    print(f"layout {config.model.layout_string}, data {config.data.source}, tokenizer {config.data.tokenizer}\n")
    results = train(config, out=out, progress=progress)
    print()
    print_results(results)
    run = out
    print(f"\nplots: {run / 'training_curves.png'}\nrun directory: {run}\n")
    prompts = ["ROMEO:\n", "First Citizen:\nWe are"]
    for prompt in prompts:
        print(f"--- sample (prompt {prompt!r}, temperature 0.8, top-k 50, seed 0) ---")
        stream_text(str(run), prompt, max_new_tokens=120, temperature=0.8, top_k=50, seed=0, device="cpu")
    return results



def _free_directory(out: Path) -> Path:
    """OUT, or OUT-2, OUT-3, ... when a demo already ran there: a rerun never replaces a finished run."""
    candidate, n = out, 1
    while holds_run(candidate):
        n += 1
        candidate = out.with_name(f"{out.name}-{n}")
    if candidate != out:
        print(f"{out} holds an earlier demo run; this one goes to {candidate}")
    return candidate
