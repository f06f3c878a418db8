"""`hybridlm sweep lr|arch|grid` and `hybridlm compare`: argument parsing only.

The main CLI calls `add_commands(subparsers)`; the work lives in plan / budget / runner / summary / compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  hybridlm sweep lr --presets h100_deltanet,h100_transformer,h100_hybrid_sparse --lrs 5e-4,1e-3,2e-3 \\
      --steps 200 --out runs/lr
  hybridlm sweep arch --layouts exp7 --steps 300 --lr-from runs/lr --out runs/arch --devices auto
  hybridlm sweep lr --presets h100_deltanet --lrs 1e-3,2e-3 --devices 0,1,2,3 --gpus-per-member 2 --out runs/lr2
  hybridlm sweep arch --preset tiny --layouts GG,GA,AA --steps 20 --out runs/tiny_arch --dry-run
  hybridlm sweep grid --preset h100_base --set-grid 'train.lr=[1e-3,2e-3]' \\
      --set-grid 'model.attention_layers=[[5,11],[11]]' --out runs/grid
rerun the same command to continue: finished members are skipped, interrupted ones resume; a preset or
--config file edited since the sweep was planned is refused (members train from DIR/configs/NAME.toml)."""


def add_commands(sub) -> None:
    sweep = sub.add_parser("sweep", help="run many members under equal conditions (lr / arch / grid), resumable",
                           description="Sweeps: every member is a run directory under --out, trained from "
                                       "DIR/configs/NAME.toml (its config, resolved when the sweep is planned); "
                                       "DIR/sweep.json is the plan, DIR/summary.md the ranking.", epilog=EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = sweep.add_subparsers(dest="sweep_kind", required=True, metavar="KIND")

    p = kinds.add_parser("lr", help="every (preset, lr) pair; reports the best lr per preset")
    p.add_argument("--presets", required=True,
                   help="comma list of preset names, layout strings (on --preset) or exp7")
    p.add_argument("--lrs", required=True, help="comma list of learning rates, e.g. 5e-4,1e-3,2e-3")
    _add_common(p, base_help="base config for layout strings (default h100_base)")
    p.set_defaults(func=cmd_sweep, build=_build_lr)

    p = kinds.add_parser("arch", help="one member per layout: exp7 (13 reference layouts), presets or strings")
    p.add_argument("--layouts", required=True,
                   help="exp7, or a comma list of preset names / layout strings like GGGGGAGGGGGA")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--lr-from", help="finished `sweep lr` directory: each layout gets the best lr found there")
    lr.add_argument("--lr", type=float, help="one learning rate for every layout")
    _add_common(p, base_help="base config for layout strings (default h100_base)")
    p.set_defaults(func=cmd_sweep, build=_build_arch)

    p = kinds.add_parser("grid", help="the cartesian product of --set-grid key=[values] lists")
    p.add_argument("--set-grid", dest="grid", action="append", default=[], metavar="KEY=[V1,V2]",
                   help="a swept key and its values as a TOML list, e.g. 'train.lr=[1e-3,2e-3]' (repeatable)")
    _add_common(p, base_help="base preset (required unless --config)")
    p.set_defaults(func=cmd_sweep, build=_build_grid)

    p = sub.add_parser("compare", help="rank runs / sweeps in one table, with plots and CSV",
                       description="Rank run directories (a sweep directory expands to its members) by a metric.")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP_DIR")
    p.add_argument("--sort", default="best_val_loss",
                   help="column to rank by: best_val_loss (default), final_val_loss, final_val_accuracy, "
                        "final_val_perplexity, tokens_per_s, params, train_time_s, lr, or an eval column "
                        "like arc_challenge/acc_norm")
    p.add_argument("--metric", help="metric on the y axis of the plots (default: the --sort column)")
    p.add_argument("--csv", dest="csv_file", help="also write the table as CSV to this file")
    p.add_argument("--out", help="directory for the plots and comparison.md")
    p.set_defaults(func=cmd_compare)


def _add_common(p: argparse.ArgumentParser, base_help: str) -> None:
    p.add_argument("--out", required=True, help="sweep directory: one run directory per member, plus reports")
    p.add_argument("--preset", help=base_help)
    p.add_argument("--config", help="TOML file layered on --preset for the base config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every member, e.g. --set data.seq_len=256 (repeatable)")
    p.add_argument("--steps", type=int, help="train.max_steps of every member (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="train.batch_size of every member (default: the preset's)")
    p.add_argument("--devices", default="auto",
                   help="auto (all visible GPUs, else cpu), cpu, cpu,cpu, or cuda:0,cuda:1: one member per slot")
    p.add_argument("--gpus-per-member", dest="nproc", type=int, default=1, metavar="K",
                   help="train each member on K devices of --devices under torchrun (DDP; the global batch is "
                        "K x --batch-size); on cpu, K gloo processes")
    p.add_argument("--eval", dest="eval_tasks", help="after each member trains: `hybridlm eval --tasks` these, "
                                                      "e.g. arc_challenge,hellaswag")
    p.add_argument("--eval-limit", type=int, help="score only the first N documents of each eval task")
    p.add_argument("--eval-data-dir", help="passed to `hybridlm eval --data-dir` (e.g. builtin-subsets)")
    p.add_argument("--member-checkpoints", choices=("all", "best", "none"), default="all",
                   help="what each member keeps once it finished (and was evaluated): all checkpoints (default), "
                        "the best weights only (no optimizer state: gigabytes less per GPU member), or none")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan, its data (unique tokens, epochs) and time estimate; train nothing")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always draw progress bars")
    group.add_argument("--no-progress", dest="progress", action="store_false", help="plain log lines")


# ----------------------------------------------------------------- plan builders
def _options(args, default_preset: str | None):
    from hybridlm.sweep.plan import BaseOptions

    config_file = str(Path(args.config).resolve()) if args.config else None
    preset = args.preset or (None if config_file else default_preset)
    return BaseOptions(out=Path(args.out).resolve(), preset=preset, config_file=config_file,
                       overrides=list(args.overrides), steps=args.steps, batch_size=args.batch_size, nproc=args.nproc)


def _build_lr(args):
    from hybridlm.sweep.plan import build_lr_plan

    return build_lr_plan(_options(args, "h100_base"), args.presets, args.lrs)


def _build_arch(args):
    from hybridlm.sweep.plan import build_arch_plan

    return build_arch_plan(_options(args, "h100_base"), args.layouts, lr_from=args.lr_from, lr=args.lr)


def _build_grid(args):
    from hybridlm.sweep.plan import build_grid_plan

    return build_grid_plan(_options(args, None), args.grid)


# -------------------------------------------------------------------- commands
def cmd_sweep(args) -> int:
    import sys

    from hybridlm.sweep.devices import parse_devices
    from hybridlm.sweep.runner import RunOptions, run_sweep
    from hybridlm.sweep.summary import SUMMARY_MD, console_report

    slots = parse_devices(args.devices, per_member=args.nproc)
    if args.dry_run:
        from hybridlm.sweep.budget import account_data
        from hybridlm.sweep.configs import merge_with_previous
        from hybridlm.sweep.overview import describe_plan

        plan = args.build(args)
        merge_with_previous(plan)
        account_data(plan, progress=args.progress is not False)
        print(describe_plan(plan, slots))
        return 0
    from hybridlm.sweep.processes import start_processes

    processes = start_processes(slots, sys.executable)  # their imports overlap the planning below
    try:
        plan = args.build(args)
    except BaseException:
        for process in processes.values():
            process.close()
        raise
    options = RunOptions(devices=args.devices, progress=args.progress, eval_tasks=args.eval_tasks,
                         eval_limit=args.eval_limit, eval_data_dir=args.eval_data_dir,
                         member_checkpoints=args.member_checkpoints)
    summary = run_sweep(plan, options, command=_command_line(args), processes=processes)
    print(console_report(summary))
    print(f"\nwrote {plan.out / SUMMARY_MD}, {plan.out / 'summary.json'} and {len(summary['plots'])} plots")
    counts = summary["counts"]
    return 0 if counts["failed"] == 0 and counts["other"] == 0 else 1


def _command_line(args) -> list[str]:
    """The sweep's arguments as a command line (for sweep.json and summary.md), rebuilt from `args`."""
    flags = [("--presets", "presets"), ("--lrs", "lrs"), ("--layouts", "layouts"), ("--lr-from", "lr_from"),
             ("--lr", "lr"), ("--preset", "preset"), ("--config", "config"), ("--steps", "steps"),
             ("--batch-size", "batch_size"), ("--devices", "devices"), ("--gpus-per-member", "nproc"),
             ("--eval", "eval_tasks"), ("--member-checkpoints", "member_checkpoints"),
             ("--eval-limit", "eval_limit"), ("--eval-data-dir", "eval_data_dir"), ("--out", "out")]
    line = ["sweep", args.sweep_kind]
    for value in getattr(args, "grid", []):
        line += ["--set-grid", value]
    for flag, attr in flags:
        value = getattr(args, attr, None)
        if value is not None and (attr, value) not in (("nproc", 1), ("member_checkpoints", "all")):
            line += [flag, str(value)]
    for value in args.overrides:
        line += ["--set", value]
    return line


def cmd_compare(args) -> int:
    from hybridlm.sweep.compare import compare

    table, records = compare(args.paths, sort=args.sort, metric=args.metric, csv_file=args.csv_file, out=args.out)
    print(table)
    if args.csv_file:
        print(f"wrote {args.csv_file}")
    if args.out:
        print(f"wrote plots and comparison.md to {args.out}")
    return 0
