"""The training loop: sampler -> model -> loss -> backward -> clip -> AdamW -> schedule.

Nothing leaves the device inside a step; losses are accumulated on the device and read at log
intervals only. Evaluation runs on fixed validation batches, checkpoints are atomic, and every
piece of state (weights, AdamW, step, sampler position, RNG) is restored on resume, so a resumed
CPU run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hybridlm.config import Config
from hybridlm.errors import DataExhausted, NonFiniteError
from hybridlm.model.accounting import count_parameters, flops_per_token
from hybridlm.runs.run_dir import RunDir
from hybridlm.runs import checkpoint as ckpt
from hybridlm.train.distributed import process_info
from hybridlm.train.full_state import gather_model_state, gather_optimizer_state, set_model_state, set_optimizer_state
from hybridlm.train.precision import Precision
from hybridlm.train.progress import Progress
from hybridlm.train.schedule import lr_at
from hybridlm.train.parallel import agree_any, all_reduce_sum, is_sharded
from hybridlm.train.signals import GracefulStop
from hybridlm.train.setup import TrainingParts
from hybridlm.train.step import StepResult, model_inputs, train_step, validation_stats

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12,
                   "RTX 4090": 165e12}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""

    step: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    best_val_loss: float = math.inf
    best_step: int = -1
    last_eval: dict | None = None
    sampler: dict | None = None
    interval: dict | None = None     # the log interval in progress: loss_sum, steps, tokens
    nonfinite: dict | None = None    # the guard's counters (skipped updates)
    global_batch: int | None = None  # windows per step (batch x accum x ranks): kept on resume (global_batch.py)
    val_batch_rows: int | None = None  # rows of each fixed validation batch, kept on resume
    world_size: int | None = None    # processes of the run that wrote it (a record: any number may resume)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["best_val_loss"] = None if math.isinf(self.best_val_loss) else self.best_val_loss
        return out

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "TrainState":
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        state = cls(**known)
        if state.best_val_loss is None:
            state.best_val_loss = math.inf
        return state


class Trainer:
    def __init__(self, config: Config, run: RunDir, parts: TrainingParts, precision: Precision, sampler,
                 val_batches: list[torch.Tensor], progress: bool | None = None, stop: GracefulStop | None = None,
                 val_batch_rows: int | None = None):
        self.config = config
        self.run = run
        self.model = parts.model
        self.optimizer = parts.optimizer
        self.forward = parts.forward
        self.no_sync = parts.no_sync
        self.guard = parts.guard
        self.precision = precision
        self.device = precision.device
        self.sampler = sampler
        self.val_batches = val_batches
        self.proc = process_info()
        t = config.train
        self.state = TrainState()
        self.global_batch = t.batch_size * t.grad_accum * self.proc.world_size
        self.val_batch_rows = val_batch_rows or t.batch_size * self.proc.world_size
        self._record_shape()
        self.tokens_per_step = self.global_batch * config.data.seq_len
        self.flops_per_token = flops_per_token(config.model, config.data.seq_len)
        self.peak_flops = peak_flops(self.device)
        self.progress = Progress(total=t.max_steps, enabled=progress, is_main=self.proc.is_main)
        self.stopped_early: str | None = None
        self.stop = stop if stop is not None else GracefulStop()  # a never-signalled one: stop.requested False
        self.first_step_s: float | None = None  # wall time of the first step (compilation, autotuning)
        self.interval_rates: list[float] = []  # tokens/s of each log interval of this process
        self._writers: list = []

    # ----------------------------------------------------------------- resume
    def restore(self, checkpoint: Path) -> None:
        """Everything a checkpoint holds; one-line errors (corrupt file, non-finite weights) before any training.

        Every rank reads the full state and keeps its part (its shards under FSDP2), so a checkpoint written by
        any number of ranks resumes on any other."""
        tensors = ckpt.read_model_state(checkpoint, self.model)
        bad = ckpt.first_non_finite(tensors.items())
        if bad is not None:
            raise NonFiniteError(f"{checkpoint} holds non-finite weights (e.g. {bad}); resume from an earlier "
                                 f"checkpoint with --resume {checkpoint.parent}/step_NNNNNN")
        optimizer_state = ckpt.read_optimizer_state(checkpoint, self.optimizer)
        set_model_state(self.model, tensors)
        set_optimizer_state(self.model, self.optimizer, optimizer_state)
        ckpt.restore_rng(checkpoint)
        self.state = TrainState.from_json(ckpt.read_trainer_state(checkpoint))
        self._record_shape()
        if self.state.sampler is not None:
            self.sampler.load_state_dict(self.state.sampler)
        self.guard.load_state_dict(self.state.nonfinite)

    def _record_shape(self) -> None:
        self.state.global_batch, self.state.val_batch_rows = self.global_batch, self.val_batch_rows
        self.state.world_size = self.proc.world_size

    # ------------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        """Train to `max_steps`; a SIGINT / SIGTERM ends the step in flight, saves, and raises TrainingInterrupted."""
        t = self.config.train
        self.model.train()
        self._open_writers()
        self.progress.start(self.state.step)
        saved = (self.state.interval or {}) if self.proc.is_main else {}  # global sums: restored once
        # the log interval in progress (restored on resume, so the resumed run logs the same means)
        interval = self.interval = {
            "loss": torch.tensor(float(saved.get("loss_sum", 0.0)), device=self.device),  # of the finite steps
            "finite": torch.tensor(int(saved.get("finite", 0)), device=self.device),
            "steps": int(saved.get("steps", 0)), "tokens": int(saved.get("tokens", 0))}
        interval_start = time.perf_counter()
        while self.state.step < t.max_steps and not agree_any(self.stop.requested):  # every rank stops at one step
            lr = lr_at(self.state.step, t.lr, t.warmup_steps, t.max_steps, t.schedule, t.min_lr_ratio)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            try:
                result = self._step()
            except DataExhausted as exc:
                self.stopped_early = str(exc)
                self.progress.write(f"stopping: {exc}")
                break
            loss, grad_norm, finite = result.loss, result.grad_norm, result.finite
            if self.first_step_s is None:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # once: the first step's real duration
                self.first_step_s = time.perf_counter() - interval_start
            self.state.step += 1
            self.state.tokens += self.tokens_per_step
            step = self.state.step
            self.guard.record(step, finite)
            interval["loss"] += torch.where(finite, loss, 0.0)
            interval["finite"] += finite
            interval["steps"] += 1
            interval["tokens"] += self.tokens_per_step
            last = step == t.max_steps
            if step % t.log_interval == 0 or last:
                skipped = self.guard.check(self._last_good)  # the one host sync per interval
                loss_sum, finite = interval["loss"].clone(), interval["finite"].clone()
                all_reduce_sum(loss_sum, finite)  # the mean over every rank's batches
                finite_steps = int(finite)
                mean_loss = (loss_sum / finite_steps).item() if finite_steps else None  # all skipped
                elapsed = time.perf_counter() - interval_start
                self.state.train_time_s += elapsed
                tps = interval["tokens"] / max(elapsed, 1e-9)
                self.interval_rates.append(tps)
                record = {"event": "train", "step": step, "loss": mean_loss, "lr": lr,
                          "grad_norm": float(grad_norm), "tokens": self.state.tokens,
                          "tokens_per_s": tps, "time_s": self.state.train_time_s}
                if t.nan_policy == "skip":
                    record["skipped_updates"] = skipped
                if self.proc.world_size > 1:
                    record["tokens_per_s_per_process"] = tps / self.proc.world_size
                if self.peak_flops:  # one GPU's peak: the share of the tokens one process computes
                    record["mfu"] = tps / self.proc.world_size * self.flops_per_token / self.peak_flops
                self._log(record)
                self.progress.update(step, loss=mean_loss if mean_loss is not None else math.nan, lr=lr, tokens_per_s=tps)
                interval["loss"].zero_()
                interval["finite"].zero_()
                interval["steps"], interval["tokens"] = 0, 0
            paused = time.perf_counter()  # evaluation and checkpoints do not count as training time
            if step % t.eval_interval == 0 or last:
                self._evaluate_and_keep_best()
            if step % t.save_interval == 0 and not last:
                self._save(self.run.checkpoint(self.run.step_name(step)), with_optimizer=True)
                self.run.prune_step_checkpoints(t.keep_checkpoints)
                self._saved_at = step
            interval_start += time.perf_counter() - paused
            if interval["steps"] == 0:
                interval_start = time.perf_counter()
        if agree_any(self.stop.requested) and self.state.step < t.max_steps:  # (at the last step: finish normally)
            if interval["steps"]:
                self.state.train_time_s += time.perf_counter() - interval_start
            self.progress.close()
            path = self.run.checkpoint(self.run.step_name(self.state.step))
            if getattr(self, "_saved_at", None) != self.state.step:  # not already saved at this very step
                self._save(path, with_optimizer=True)
                self.run.prune_step_checkpoints(t.keep_checkpoints)
            self._close_writers()
            raise self.stop.interrupted(f"at step {self.state.step}", f"; saved {path}. "
                                        f"Resume with: hybridlm train --resume {self.run.path}")
        if self.state.last_eval is None or self.state.last_eval.get("step") != self.state.step:
            self._evaluate_and_keep_best()
        self._save(self.run.checkpoint("final"), with_optimizer=True)
        self.progress.close()
        self._close_writers()
        return self.state.to_json()

    def _last_good(self) -> str:
        """Where a stopped run can go on from (only called when it stops)."""
        latest = self.run.latest_resumable(on_skip=lambda *_: None)
        if latest is None:
            return ("No checkpoint was saved before it: lower train.lr (or set train.nan_policy=skip) and start "
                    "again with --overwrite")
        return (f"The newest good checkpoint is {latest}: lower train.lr in a new run, or continue it with "
                f"`hybridlm train --resume {latest} --set train.nan_policy=skip`")

    def _step(self) -> StepResult:
        """One optimisation step on the next `grad_accum` batches (the shared `train_step`)."""
        t = self.config.train
        micro_batches = [self.sampler.next_batch() for _ in range(t.grad_accum)]
        return train_step(self.forward, self.model, self.optimizer, micro_batches, self.precision, t.grad_clip,
                          self.guard, self.no_sync)

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss, next-token accuracy and perplexity on the fixed validation batches."""
        model = self.model
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        hits = torch.zeros((), dtype=torch.long, device=self.device)
        count = torch.zeros((), dtype=torch.long, device=self.device)
        for batch in self.val_batches:  # this rank's rows of each global validation batch (launch.py)
            inputs, labels, varlen = model_inputs(batch.to(self.device, non_blocking=True))
            with self.precision.autocast():
                s, h, c = validation_stats(model, inputs, labels, **varlen)
            loss_sum += s.double()
            hits += h
            count += c
        if is_sharded(model):
            model.reshard()  # the root's gathered weights (embeddings, LM head) are not needed until the next step
        model.train(was_training)
        all_reduce_sum(loss_sum, hits, count)  # the same numbers as one process over all the batches
        val_loss = (loss_sum / count.clamp(min=1)).item()
        return {"val_loss": val_loss, "val_accuracy": (hits.double() / count.clamp(min=1)).item(),
                "val_perplexity": math.exp(min(val_loss, 700.0))}

    def _evaluate_and_keep_best(self) -> None:
        self.guard.check(self._last_good)  # never evaluate (or keep as best) non-finite weights
        metrics = self.evaluate()
        step = self.state.step
        self.state.last_eval = {"step": step, **metrics}
        self._log({"event": "eval", "step": step, "tokens": self.state.tokens, **metrics})
        self.progress.write(f"step {step}: val loss {metrics['val_loss']:.4f}, "
                            f"accuracy {metrics['val_accuracy']:.3f}, perplexity {metrics['val_perplexity']:.1f}")
        if metrics["val_loss"] < self.state.best_val_loss:
            self.state.best_val_loss = metrics["val_loss"]
            self.state.best_step = step
            self._save(self.run.checkpoint("best"), with_optimizer=False)

    # ------------------------------------------------------- files and logs
    def _save(self, path: Path, with_optimizer: bool) -> Path:
        """Write a checkpoint of the last completed step; never one of non-finite weights."""
        self.guard.check(self._last_good)
        self.state.sampler = self.sampler.state_dict()
        self.state.nonfinite = self.guard.state_dict()
        interval = getattr(self, "interval", None)
        if interval is not None:
            loss_sum, finite = interval["loss"].clone(), interval["finite"].clone()
            all_reduce_sum(loss_sum, finite)  # every rank's part of the interval in progress
            self.state.interval = {"loss_sum": float(loss_sum), "finite": int(finite),
                                   "steps": interval["steps"], "tokens": interval["tokens"]}
        # the full state, gathered from every rank's shards under FSDP2 (a collective: every rank is here)
        model_state = gather_model_state(self.model)
        optimizer_state = gather_optimizer_state(self.model, self.optimizer) if with_optimizer else None
        if not self.proc.is_main:
            return path
        trainer_state = {**self.state.to_json(), "config": self.config.to_dict()}
        return ckpt.save_checkpoint(path, model_state, optimizer_state, trainer_state)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.proc.is_main:
            return
        self.run.append_metrics(record)
        for writer in self._writers:
            writer(record)

    def _open_writers(self) -> None:
        from hybridlm.train.trackers import open_trackers

        if self.proc.is_main:
            self._writers, self._closers = open_trackers(self.config, self.run.path)

    def _close_writers(self) -> None:
        for close in getattr(self, "_closers", []):
            close()

    def summary(self) -> dict[str, Any]:
        counts = count_parameters(self.model)
        s = self.state
        last = s.last_eval or {}
        tps = s.tokens / s.train_time_s if s.train_time_s > 0 else None
        # the first log interval holds compilation / autotuning (minutes with FLA on a cold cache)
        later = sorted(self.interval_rates[1:])
        steady = later[len(later) // 2] if later else tps
        return {
            "params": counts,
            "results": {
                "best_val_loss": None if math.isinf(s.best_val_loss) else s.best_val_loss,
                "best_step": s.best_step,
                "final_val_loss": last.get("val_loss"),
                "final_val_accuracy": last.get("val_accuracy"),
                "final_val_perplexity": last.get("val_perplexity"),
                "steps": s.step,
                "train_time_s": s.train_time_s,
                "tokens_processed": s.tokens,
                "tokens_per_s": tps,
                "tokens_per_s_steady": steady,
                "mfu": (tps / self.proc.world_size * self.flops_per_token / self.peak_flops
                        if (tps and self.peak_flops) else None),
                "flops_per_token": self.flops_per_token,
                "stopped_early": self.stopped_early,
                "first_step_s": self.first_step_s,
            },
        }
