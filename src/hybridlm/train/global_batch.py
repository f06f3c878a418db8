"""A step's global batch is part of the experiment; the number of ranks that computes it is not.

A step trains on batch_size x grad_accum x world_size windows, taken in order from the sampler's one
stream (data/sampler.py). How that product is split between micro-batch size, accumulation and
ranks changes only the order of float additions, never which windows a step sees, how many steps
the run has or its learning-rate schedule. So a run records its global batch (and the rows of its
fixed validation batches) in every checkpoint, and resumed on another number of ranks it keeps both:

- with batch_size and grad_accum as saved, grad_accum is rescaled (2 ranks x accum 2 -> 1 rank x
  accum 4), keeping each rank's micro-batch, and so its memory, as it was; where the ranks' share is
  not a multiple of it, the micro-batch becomes the largest divisor of that share below the saved one;
- batch_size / grad_accum set on resume must multiply with the ranks to the global batch;
- a global batch the ranks cannot share evenly is an error that names world sizes that can.
"""

from __future__ import annotations

from hybridlm.config import Config, resolve
from hybridlm.errors import ConfigError


def recorded_global_batch(state: dict, saved: Config) -> int:
    """Windows per step of the run a checkpoint belongs to (older checkpoints: from the sampler state)."""
    if state.get("global_batch"):
        return int(state["global_batch"])
    sampler = state.get("sampler") or {}
    ranks = int(sampler.get("world_size", 1))
    return int(sampler.get("batch_size", saved.train.batch_size)) * ranks * saved.train.grad_accum


def recorded_validation_rows(state: dict, saved: Config) -> int:
    """Rows of each fixed validation batch of that run (batch_size x ranks when it started)."""
    if state.get("val_batch_rows"):
        return int(state["val_batch_rows"])
    sampler = state.get("sampler") or {}
    return int(sampler.get("batch_size", saved.train.batch_size)) * int(sampler.get("world_size", 1))


def keep_global_batch(config: Config, saved: Config, global_batch: int, world_size: int) -> tuple[Config, str | None]:
    """`config` split for `world_size` ranks so a step still trains on `global_batch` windows, and a note
    saying what changed (None when nothing did).

    `saved` is the run's own config: where `config` changes batch_size or grad_accum (the user's
    choice on resume), the product must already be right; otherwise they are rescaled here."""
    t = config.train
    product = t.batch_size * t.grad_accum * world_size
    if product == global_batch:
        return config, None
    ranks = "process" if world_size == 1 else "processes"
    if (t.batch_size, t.grad_accum) != (saved.train.batch_size, saved.train.grad_accum):
        raise ConfigError(f"train.batch_size {t.batch_size} x train.grad_accum {t.grad_accum} x {world_size} {ranks} "
                          f"= {product} windows per step, but this run trains on {global_batch}; choose values whose "
                          "product with the number of processes is that (or leave them as saved)")
    if global_batch % world_size:
        fits = [n for n in range(1, min(global_batch, 64) + 1) if global_batch % n == 0]
        raise ConfigError(f"this run trains on global batches of {global_batch} windows, which {world_size} {ranks} "
                          f"cannot share evenly; resume it on {', '.join(map(str, fits))} processes")
    share = global_batch // world_size
    batch = max(d for d in range(1, min(t.batch_size, share) + 1) if share % d == 0)
    accum = share // batch
    note = (f"resuming on {world_size} {ranks} a run that trains on global batches of {global_batch} windows: "
            + ", ".join(f"train.{key} {old} -> {new}" for key, old, new in
                        (("batch_size", t.batch_size, batch), ("grad_accum", t.grad_accum, accum)) if old != new))
    return resolve(base=config, values={"train.batch_size": batch, "train.grad_accum": accum}), note
