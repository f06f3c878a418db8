"""`train(config, out)`: everything around the loop — data, model, resume, results, plots.

Usable from a notebook (`hybridlm.train(hybridlm.preset("tiny"), out="runs/x")`) and from the CLI.
All checks that can fail (output directory, data, checkpoint, FLA source) run before the first step.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from hybridlm.config import RESUME_SAFE_KEYS, Config, changed_keys, resolve
from hybridlm.config.resolve import RESUME_RESPLIT_KEYS
from hybridlm.errors import BackendError, CheckpointError, ConfigError
from hybridlm.fla_source import ENV_VAR as FLA_ENV_VAR
from hybridlm.fla_source import activate_fla_source
from hybridlm.runs import RunDir, find_run_dir, load_run_config
from hybridlm.runs.writer import RunLock, clear_run, describe_run, holds_run
from hybridlm.runs.checkpoint import OPTIMIZER_TENSORS, read_trainer_state, verify_checkpoint
from hybridlm.runs.environment import environment_info
from hybridlm.train.distributed import process_info
from hybridlm.train.global_batch import keep_global_batch, recorded_global_batch, recorded_validation_rows
from hybridlm.train.parallel import barrier, init_distributed, share_outcome, shutdown
from hybridlm.train.precision import resolve_precision
from hybridlm.train.signals import GracefulStop


def train(config: Config | None = None, out: str | Path | None = None, resume: str | Path | None = None,
          extend_steps: int | None = None, progress: bool | None = None, overwrite: bool = False,
          fla_path: str | None = None) -> dict[str, Any]:
    """Train (or resume / extend) a run and return its results.json content.

    A fresh run refuses an `out` that already holds a run unless `overwrite` (which replaces it
    whole). `resume` continues DIR from its own config: `config`, if given, may differ from it only
    in RESUME_SAFE_KEYS and in how the global batch is split (train/global_batch.py, which also
    rescales grad_accum on another number of processes), and `extend_steps` is the one way to train
    longer. A finished run with nothing left to train is returned as it is, untouched. Only
    `fla_path` (or HYBRIDLM_FLA_PATH) puts a local FLA clone on sys.path; a config's `fla.path` is a
    record, never activated.
    """
    run, config, checkpoint = _resolve_run(config, out, resume, extend_steps)
    if checkpoint is not None:
        step = int(read_trainer_state(checkpoint).get("step", 0))
        results = run.read_results() or {}
        if step >= config.train.max_steps and results.get("results", {}).get("steps") == step:
            return {**results, "nothing_to_train": f"{run.path} has trained {step} of {config.train.max_steps} "
                                                    "steps; nothing left to train (use --extend-steps N to go on)"}
        # (trained, but killed before results.json was written: the resume below trains no step and writes it)
    proc = process_info()
    # under torchrun: the process group, this rank's GPU
    device = init_distributed(proc, config.train.device, config.train.parallel)
    lock = RunLock(run.path)

    def claim() -> None:  # rank 0 alone owns the directory; its refusal stops every rank
        lock.acquire()
        if checkpoint is None and holds_run(run.path):
            if not overwrite:
                raise ConfigError(f"{run.path} already holds a run ({describe_run(run.path)}); use --resume "
                                  f"{run.path} to continue it, or --overwrite to replace it")
            clear_run(run.path)

    try:
        with GracefulStop() as stop:
            share_outcome(proc.rank, claim)
            return _train_locked(run, config, checkpoint, progress, fla_path, stop, device)
    finally:
        lock.release()
        shutdown()


def _train_locked(run: RunDir, config: Config, checkpoint: Path | None, progress: bool | None,
                  fla_path: str | None, stop: GracefulStop, device: torch.device) -> dict[str, Any]:
    fla = activate_fla_source(fla_path)
    config = _record_fla_source(config, fla)
    previous_time = _previous_total_time(run) if checkpoint is not None else 0.0  # read before training
    if process_info().is_main:
        run.prepare()

    from hybridlm.data import TrainSampler, prepare_data, validation_batches
    from hybridlm.data.packing import batch_for
    from hybridlm.runs.plots import plot_training_curves
    from hybridlm.train.setup import build_training
    from hybridlm.train.trainer import Trainer

    proc = process_info()
    if not proc.is_main:
        barrier()  # rank 0 tokenises (and caches) first; the others then read its cache
    data = prepare_data(config.data, progress=progress is not False and proc.is_main)
    if proc.is_main:
        barrier()
    if config.model.vocab_size != data.tokenizer.vocab_size:
        config = resolve(base=config, values={"model.vocab_size": data.tokenizer.vocab_size})
    precision = resolve_precision(config.train.precision, device)

    torch.manual_seed(config.train.seed)
    parts = build_training(config, precision, proc.world_size)
    kernels = parts.model.kernels.describe()
    packing, eos_id = config.data.packing, data.tokenizer.eos_id
    sampler = TrainSampler(data.train_tokens, config.train.batch_size, config.data.seq_len, seed=config.data.seed,
                           on_exhausted=config.data.on_exhausted, rank=proc.rank, world_size=proc.world_size,
                           pin_memory=device.type == "cuda", packing=packing, eos_id=eos_id)
    # the fixed validation set is made of global batches (batch_size x ranks when the run started, kept on
    # resume); each rank scores its rows, so a run evaluates the same windows whatever its number of processes
    val_rows = config.train.batch_size * proc.world_size
    if checkpoint is not None:
        val_rows = recorded_validation_rows(read_trainer_state(checkpoint), config)
    val = [batch_for(batch[proc.rank::proc.world_size], packing, eos_id) for batch in validation_batches(
        data.val_tokens, val_rows, config.data.seq_len, config.train.eval_batches)]
    trainer = Trainer(config, run, parts, precision, sampler, val, progress=progress, stop=stop,
                      val_batch_rows=val_rows)
    trainer.progress.write("kernels: " + ", ".join(f"{k} {v}" for k, v in kernels.items() if k != "reason")
                           + (", blocks compiled" if parts.compiled else "") + f" ({kernels['reason']})")
    if parts.parallel != "none" or parts.activation_checkpointing != "none":
        trainer.progress.write(f"parallel: {parts.parallel} over {proc.world_size} process(es), activation "
                               f"checkpointing {parts.activation_checkpointing}")
    if checkpoint is not None:
        trainer.restore(checkpoint)  # every check that can refuse the resume runs before anything is written
    if proc.is_main:
        config.save(run.config_file)
        data.tokenizer.save(run.tokenizer_dir)
    if checkpoint is not None:
        run.truncate_metrics(after_step=trainer.state.step)
        trainer.progress.write(f"resumed from {checkpoint} at step {trainer.state.step}")
    else:
        run.metrics_file.unlink(missing_ok=True)
    stop.arm()
    started = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - started

    summary = trainer.summary()
    results = {
        "experiment": config.run.name or run.path.name,
        "description": config.run.description,
        "config": config.to_dict(),
        "model": {
            "params_total": summary["params"]["total"],
            "params_non_embedding": summary["params"]["non_embedding"],
            "params_by_type": {k: v for k, v in summary["params"].items() if k not in ("total", "non_embedding")},
            "layout": config.model.layout_string,
            "layer_types": config.model.layer_types,
            "attention_layers": sorted(config.model.attention_layer_set),
            "attention_fraction": config.model.attention_fraction,
        },
        "data": {**{k: data.manifest.get(k) for k in ("source", "tokenizer", "vocab_size", "train_tokens",
                                                        "val_tokens", "train_documents", "val_documents")},
                 "epochs": sampler.epochs_read},  # > 1: the run read some training tokens more than once
        "results": {**summary["results"], "total_time_s": previous_time + wall},
        "environment": {**environment_info(device, parts.model.kernels.backend), "precision": precision.name,
                        "fla": fla, "kernels": kernels, "compiled": parts.compiled, "parallel": parts.parallel,
                        "world_size": proc.world_size, "activation_checkpointing": parts.activation_checkpointing},
    }
    results["hybridlm_commit"] = results["environment"]["hybridlm_commit"]
    if proc.is_main:
        run.write_results(results)
        plot_training_curves(run.read_metrics(), run.curves_file, title=results["experiment"])
    return results


def _resolve_run(config: Config | None, out, resume, extend_steps) -> tuple[RunDir, Config, Path | None]:
    if resume is None:
        if extend_steps is not None:
            raise ConfigError("--extend-steps needs --resume DIR (the finished run to continue)")
        if config is None:
            raise ConfigError("train needs a config (or --preset) unless it resumes a run")
        if out is None:
            raise ConfigError("train needs an output directory (--out DIR)")
        return RunDir(out), resolve(base=config), None
    run, explicit = find_run_dir(resume)
    saved = load_run_config(run)
    wanted = saved
    if config is not None:
        refused = [k for k in changed_keys(saved, config) if k not in RESUME_SAFE_KEYS + RESUME_RESPLIT_KEYS]
        if refused:
            raise ConfigError(f"a resumed run keeps its own config; it differs in {', '.join(refused[:5])}. Only "
                              f"{', '.join(RESUME_SAFE_KEYS)} may change on resume (--extend-steps N trains longer)")
        wanted = config
    skipped: list[tuple[Path, str]] = []
    if explicit is not None:
        verify_checkpoint(explicit)  # named by the user: no fallback, a corrupt one is an error
        if not (explicit / OPTIMIZER_TENSORS).is_file():
            raise CheckpointError(f"{explicit} holds no optimizer state (a best-model checkpoint?); resume from "
                                  "a periodic or final checkpoint, or from the run directory")
        checkpoint = explicit
    else:
        checkpoint = run.latest_resumable(on_skip=lambda path, reason: skipped.append((path, reason)))
    if checkpoint is None:
        why = "; ".join(f"{path.name}: {reason}" for path, reason in skipped)
        raise CheckpointError(f"{run.path} has no intact checkpoint with optimizer state to resume from"
                              + (f" ({why})" if why else ""))
    for path, reason in skipped:
        print(f"warning: checkpoint {path} is unusable ({reason}); resuming from {checkpoint} instead",
              file=sys.stderr)
    state = read_trainer_state(checkpoint)
    step = int(state.get("step", 0))
    if extend_steps is not None:
        if extend_steps <= step:
            raise ConfigError(f"--extend-steps {extend_steps} must exceed the run's current step {step}")
        wanted = resolve(base=wanted, values={"train.max_steps": extend_steps})
    proc = process_info()
    wanted, note = keep_global_batch(resolve(base=wanted), saved, recorded_global_batch(state, saved), proc.world_size)
    val_rows = recorded_validation_rows(state, saved)
    if val_rows < proc.world_size:
        raise ConfigError(f"this run's validation batches have {val_rows} rows, fewer than the {proc.world_size} "
                          f"processes that would score them; resume it on at most {val_rows} processes")
    if note and proc.is_main:
        print(f"note: {note}", file=sys.stderr)
    return run, wanted, checkpoint


def _record_fla_source(config: Config, fla: dict) -> Config:
    """The config records the FLA clone actually in use; a different saved clone is reported, never imported."""
    active = str(Path(fla["path"]).parent) if fla.get("source") == "local_clone" and fla.get("path") else None
    saved = config.fla.path
    if saved and (active is None or Path(saved).expanduser().resolve() != Path(active).resolve()):
        using = f"the local clone {active}" if active else f"FLA from {fla.get('source')}"
        message = (f"the config names fla.path = {saved}, which is not activated (only --fla-path or "
                   f"{FLA_ENV_VAR} put a clone on the import path); using {using}")
        if config.model.kernels == "fla":
            raise BackendError(message + "; with model.kernels = 'fla' that would change the kernels, so this "
                               "stops here: pass --fla-path to use that clone")
        warnings.warn(message, stacklevel=3)
    if active == saved:
        return config
    return resolve(base=config, values={"fla.path": active})


def _previous_total_time(run: RunDir) -> float:
    old = run.read_results()
    if old and old.get("results", {}).get("total_time_s") is not None:
        return float(old["results"]["total_time_s"])
    return 0.0


