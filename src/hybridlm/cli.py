"""The `hybridlm` command: one entry point whose subcommands mirror the jobs.

Each subcommand's work lives in its own module; this file only parses arguments, imports
lazily (so `--help` is instant) and turns user errors into one-line messages.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", help="named preset (see `hybridlm presets`)")
    p.add_argument("--config", help="TOML file with [model] [data] [train] [run] [fla] sections")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field, e.g. --set train.lr=2e-3 --set model.attention_layers=[5,11]")


def build_config(args):
    from hybridlm.config import resolve

    return resolve(preset=args.preset, file=args.config, overrides=args.overrides)


def _fla_path(args) -> str | None:
    """The FLA clone named on this command line (--fla-path, or --set fla.path=...), else None."""
    from hybridlm.config import parse_assignment

    path = getattr(args, "fla_path", None)
    for assignment in getattr(args, "overrides", []):
        key, value = parse_assignment(assignment)
        if key == "fla.path" and value:
            path = path or str(value)
    return path


def _torchrun(nproc: int, argv: list[str]) -> int:
    """`hybridlm train --nproc N ...` on one node: the same command under torchrun with N processes."""
    import subprocess

    from hybridlm.errors import ConfigError

    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--nproc starts torchrun itself; under torchrun, leave it out")
    rest: list[str] = []
    skip = False
    for arg in argv:  # the same arguments without --nproc
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "hybridlm", *rest]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(  # the ranks import this very hybridlm
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.call(command, env=env)


# ---------------------------------------------------------------- subcommands
def cmd_train(args) -> int:
    from hybridlm.errors import ConfigError
    from hybridlm.reports import print_results
    from hybridlm.train import train

    if args.nproc is not None:
        return _torchrun(args.nproc, getattr(args, "raw_argv", sys.argv[1:]))

    if args.resume:
        if args.overwrite:
            raise ConfigError("--overwrite starts a new run; it cannot be combined with --resume")
        from hybridlm.config import resume_changes
        from hybridlm.runs import find_run_dir, load_run_config

        saved = load_run_config(find_run_dir(args.resume)[0])
        config = resume_changes(saved, preset=args.preset, file=args.config, overrides=args.overrides)
        results = train(config, resume=args.resume, extend_steps=args.extend_steps, progress=args.progress,
                        fla_path=_fla_path(args))
        if "nothing_to_train" in results:
            print(results["nothing_to_train"])
            return 0
    else:
        if args.extend_steps is not None:
            raise ConfigError("--extend-steps needs --resume DIR (the finished run to continue)")
        config = build_config(args)
        out = args.out or str(Path("runs") / (config.run.name or args.preset or "run"))
        results = train(config, out=out, progress=args.progress, overwrite=args.overwrite, fla_path=_fla_path(args))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one table, from rank 0
        print_results(results)
    return 0


def cmd_presets(args) -> int:
    from hybridlm.reports import print_presets

    print_presets()
    return 0


def cmd_info(args) -> int:
    from hybridlm.reports import print_info

    if not args.run and not args.preset and not args.config:
        from hybridlm.errors import ConfigError

        raise ConfigError("info needs --preset NAME, --config FILE or --run DIR")
    if args.run:
        from hybridlm.runs import find_run_dir, load_run_config

        config = load_run_config(find_run_dir(args.run)[0])
    else:
        config = build_config(args)
    print_info(config)
    return 0


def cmd_generate(args) -> int:
    import codecs

    from hybridlm import generate
    from hybridlm.errors import ConfigError

    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.prompts_file and (args.interactive or args.prompt):
        raise ConfigError("--prompts-file generates for its own prompts; leave out --prompt and --interactive")
    if not args.prompts_file and (args.out or args.batch_size is not None):
        raise ConfigError("--out and --batch-size go with --prompts-file FILE")
    options = generate.Options(args.max_new_tokens, args.temperature, args.top_k or None, args.top_p,
                               args.repetition_penalty, args.seed)
    if args.prompts_file:
        generate.generate_file(args.run, args.prompts_file, args.out, args.batch_size or 32, args.checkpoint,
                               options, args.device, args.dtype)
    elif args.interactive:
        stop = codecs.decode(args.stop, "unicode_escape") if args.stop else None
        generate.chat(args.run, args.checkpoint, options, args.device, args.dtype, stop=stop, prompt=args.prompt)
    else:
        generate.stream_text(args.run, args.prompt, checkpoint=args.checkpoint, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p,
                             seed=args.seed, device=args.device, repetition_penalty=args.repetition_penalty,
                             dtype=args.dtype)
    return 0


def cmd_doctor(args) -> int:
    from hybridlm.doctor import print_doctor

    if args.fla_path:
        os.environ["HYBRIDLM_FLA_PATH"] = args.fla_path
    print_doctor()
    return 0


def cmd_export(args) -> int:
    from hybridlm.interop import save_fla
    from hybridlm.runs import load_run

    model, tokenizer = load_run(args.run, checkpoint=args.checkpoint)
    path = save_fla(model, args.out)
    tokenizer.save(path)
    print(f"wrote FLA checkpoint {path} (config.json, model.safetensors, tokenizer)")
    return 0


def cmd_verify(args) -> int:
    from hybridlm.verify import run_verify

    return run_verify(tuple(args.sections.split(",")), run=args.run)


def cmd_demo(args) -> int:
    from hybridlm.demo import run_demo

    run_demo(out=args.out, steps=args.steps, progress=args.progress)
    return 0


# ------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybridlm", description="Train, ablate and evaluate hybrid Gated DeltaNet / attention LMs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a preset / config (or resume / extend a run)")
    _add_config_args(p)
    p.add_argument("--out", help="run directory (default runs/<name>)")
    p.add_argument("--resume", help="run directory or checkpoint to resume from")
    p.add_argument("--extend-steps", type=int, help="continue a finished run to this many total steps")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (its checkpoints, metrics and plots are deleted)")
    p.add_argument("--fla-path", help="local flash-linear-attention clone to import fla from")
    p.add_argument("--nproc", type=int, help="train one model with N processes on this machine (runs torchrun; "
                   "one per GPU, or gloo on a CPU)")
    _add_progress_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("presets", help="list the named presets")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("info", help="layer map, parameter counts, FLOPs and memory of a preset or run")
    _add_config_args(p)
    p.add_argument("--run", help="run directory")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("generate", help="sample text from a trained run: streamed, as a conversation, or for a "
                       "file of prompts (JSONL out)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="best", help="best | final | latest | step_NNNNNN | PATH")
    p.add_argument("--prompt", default="", help="text to continue (default: start of a document); with "
                   "--interactive, put before the first line read")
    p.add_argument("--interactive", action="store_true",
                   help="read lines from stdin and reply to each, keeping the model's state between turns")
    p.add_argument("--stop", default=None, help="with --interactive: end a reply once it contains this text "
                   "(escapes such as \\n understood)")
    p.add_argument("--prompts-file", help="one prompt per line (or JSONL with a \"prompt\" field): generate for "
                   "all of them, in batches, as JSONL")
    p.add_argument("--batch-size", type=int, default=None, help="with --prompts-file: prompts per batch (32)")
    p.add_argument("--out", help="with --prompts-file: the JSONL file to write (default: stdout)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=50, help="0: off")
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="CTRL's penalty on tokens already "
                   "in the row (1: off)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU) | float32 | bfloat16 "
                   "| float16")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("doctor", help="what this machine has: torch, CUDA, GPU, triton, FLA, tilelang")
    p.add_argument("--fla-path", help="local flash-linear-attention clone to check")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("export", help="write a run's checkpoint as an FLA / Hugging Face directory")
    p.add_argument("--run", required=True)
    p.add_argument("--checkpoint", default="best")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("verify", help="GPU: check FLA kernels against the PyTorch reference (exit 1 on failure)")
    p.add_argument("--sections", default="fla_model,decode,flex,loss,model,compile,op",
                   help="comma list of fla_model, decode, flex, loss, model, compile, opcheck, op (= op_bf16 + "
                        "op_fp32), run in this order")
    p.add_argument("--run", help="decode section: a trained run for the greedy-decoding rows (default: random "
                   "weights)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("demo", help="the README demo: train cpu_demo, print results and sample text")
    p.add_argument("--out", default="runs/cpu_demo")
    p.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    _add_progress_args(p)
    p.set_defaults(func=cmd_demo)

    _add_extension_commands(sub)
    return parser


def _add_progress_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always show a progress bar")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="plain log lines instead of a progress bar")


def _add_extension_commands(sub) -> None:
    """Subcommands whose parsers live with their packages (sweep, compare, eval)."""
    from hybridlm.evaluation.cli import add_commands as add_eval
    from hybridlm.sweep.cli import add_commands as add_sweep

    add_sweep(sub)
    add_eval(sub)


def _ignore_further_signals() -> None:
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    from hybridlm.errors import HybridLMError, TrainingInterrupted

    parser = build_parser()
    args = parser.parse_args(argv)
    args.raw_argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return args.func(args)
    except TrainingInterrupted as exc:
        if argv is None:  # the process is ours (not a caller's): a late second signal must not change the exit
            _ignore_further_signals()
        print(f"{exc}", file=sys.stderr)
        return exc.exit_code
    except HybridLMError as exc:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"{rank}error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
