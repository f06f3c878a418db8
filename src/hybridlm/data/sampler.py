"""Batches of token windows for training (shuffled, resumable) and validation (fixed).

Training windows: the stream is cut into n = (len(tokens) - 1) // seq_len windows of seq_len + 1
tokens; window i = tokens[i*seq_len : i*seq_len + seq_len + 1]. Consecutive windows share one
boundary token, so every token after the first is a target exactly once per epoch.

Order: epoch e visits all n windows in the permutation drawn from numpy's Generator seeded with
(seed, e). Epochs are laid end to end into one endless stream of window ids, and each step takes
the next batch_size * world_size ids of that stream (the global batch); rank r gets rows
r, r + world_size, r + 2*world_size, ... of it. A global batch that runs past the end of an
epoch continues with the start of the next permutation, so with "repeat" no window is dropped
and none is served twice in an epoch; with "stop" the first step that would need the next epoch
raises `DataExhausted` instead (the last n mod (batch_size*world_size) windows go unused).
The whole state is one integer, the stream position, which makes resuming exact.

With packing "documents" (data/packing.py) the same windows come as a `DocumentBatch`: flattened, with
their document boundaries and the cross-document targets masked; the order and the state are the same.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from hybridlm.errors import DataError, DataExhausted

from .packing import DocumentBatch, batch_for, check_packing

_STATE_VERSION = 1


def window_count(num_tokens: int, seq_len: int) -> int:
    """The training windows (of seq_len + 1 tokens) in a split of `num_tokens` tokens: one epoch."""
    return (num_tokens - 1) // seq_len if num_tokens > 0 else 0


class TrainSampler:
    """Shuffled, non-repeating, resumable batches `[batch_size, seq_len + 1]` of training windows."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int,
                 on_exhausted: str = "repeat", rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False, packing: str = "stream", eos_id: int | None = None) -> None:
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size {batch_size} and seq_len {seq_len} must be positive; fix the config")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is not in range for world_size {world_size}; check the launcher")
        if on_exhausted not in ("repeat", "stop"):
            raise DataError(f"data.on_exhausted is {on_exhausted!r}; use 'repeat' or 'stop'")
        check_packing(packing, eos_id)
        self.packing, self.eos_id = packing, eos_id
        self.num_windows = window_count(len(tokens), seq_len)
        if self.num_windows < 1:
            raise DataError(f"seq_len {seq_len} is larger than the training split ({len(tokens)} tokens); "
                            "lower data.seq_len or use more text")
        self.tokens = tokens
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        self.on_exhausted = on_exhausted
        self.rank = rank
        self.world_size = world_size
        self.pin_memory = pin_memory and torch.cuda.is_available()  # pinning needs a CUDA runtime
        self.position = 0  # index into the endless stream of window ids, shared by all ranks
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)
        self._rows = rank + world_size * np.arange(batch_size, dtype=np.int64)
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def epoch(self) -> int:
        """The epoch of the next window to be served."""
        return self.position // self.num_windows

    @property
    def epochs_read(self) -> float:
        """How many times over the windows served so far cover the split (2.5: every window 2 or 3 times)."""
        return self.position / self.num_windows

    @property
    def steps_per_epoch(self) -> float:
        return self.num_windows / self.global_batch_size

    def next_batch(self) -> torch.Tensor | DocumentBatch:
        """The next `[batch_size, seq_len + 1]` int64 batch (pinned if `pin_memory` and CUDA); with packing
        "documents" the same windows as a `DocumentBatch`."""
        start, end = self.position, self.position + self.global_batch_size
        if self.on_exhausted == "stop" and end > self.num_windows:
            raise DataExhausted(f"training data exhausted after {self.num_windows} windows of {self.seq_len + 1} "
                                "tokens (epoch 0); data.on_exhausted='stop' ends training here")
        previous_epoch = (start - 1) // self.num_windows if start > 0 else 0
        if self.rank == 0:
            for epoch in range(previous_epoch + 1, (end - 1) // self.num_windows + 1):
                warnings.warn(f"training data exhausted after {self.num_windows} windows (epoch {epoch - 1}); "
                              f"starting epoch {epoch} reshuffled", stacklevel=2)
        window_ids = self._window_ids(start + self._rows)
        batch = torch.empty((self.batch_size, self.seq_len + 1), dtype=torch.int64, pin_memory=self.pin_memory)
        index = window_ids[:, None] * self.seq_len + self._offsets
        batch.numpy()[...] = self.tokens[index]
        self.position = end
        if self.packing == "stream":
            return batch
        packed = batch_for(batch, self.packing, self.eos_id)
        return packed.pin_memory() if self.pin_memory else packed

    def _window_ids(self, stream_positions: np.ndarray) -> np.ndarray:
        epochs = stream_positions // self.num_windows
        within = stream_positions % self.num_windows
        first = int(epochs[0])
        if int(epochs[-1]) == first:
            return self._permutation(first)[within]
        ids = np.empty_like(stream_positions)
        for epoch in np.unique(epochs).tolist():
            mask = epochs == epoch
            ids[mask] = self._permutation(epoch)[within[mask]]
        return ids

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._permutations.get(epoch)
        if perm is None:
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch]))
            perm = rng.permutation(self.num_windows)
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = perm
        return perm

    def state_dict(self) -> dict:
        """JSON-serialisable position in the stream; restoring it continues with the same batches."""
        return {"version": _STATE_VERSION, "seed": self.seed, "epoch": self.epoch, "position": self.position,
                "batch_size": self.batch_size, "seq_len": self.seq_len, "num_windows": self.num_windows,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; the data and seq_len must match (batch size may differ)."""
        try:
            num_windows, seq_len = int(state["num_windows"]), int(state["seq_len"])
            seed, position = int(state["seed"]), int(state["position"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"the sampler state is incomplete ({e!r} missing or invalid); "
                            "resume from a checkpoint written by this version") from None
        if seq_len != self.seq_len or num_windows != self.num_windows:
            raise DataError(f"the sampler state was saved for {num_windows} windows of seq_len {seq_len}, but this "
                            f"data has {self.num_windows} windows of seq_len {self.seq_len}; resume with the same "
                            "data and data.seq_len")
        if position < 0:
            raise DataError(f"the sampler state has a negative position {position}; the checkpoint is corrupt")
        if seed != self.seed:
            self._permutations = {}
        self.seed, self.position = seed, position


def validation_batches(val_tokens: np.ndarray, batch_size: int, seq_len: int,
                       num_batches: int) -> list[torch.Tensor]:
    """`num_batches` fixed `[batch_size, seq_len + 1]` batches, evenly spaced over the validation split.

    They depend only on the arguments, so every run and architecture is scored on the same windows.
    With packing "documents", `packing.batch_for` turns each (or each rank's rows of it) into a
    `DocumentBatch`, so validation is packed as training is.
    """
    if batch_size < 1 or num_batches < 1:
        raise DataError(f"validation batch_size {batch_size} and num_batches {num_batches} must be positive")
    available = (len(val_tokens) - 1) // seq_len if len(val_tokens) > seq_len else 0
    if available < 1:
        raise DataError(f"seq_len {seq_len} is larger than the validation split ({len(val_tokens)} tokens); "
                        "lower data.seq_len or raise data.val_fraction")
    needed = batch_size * num_batches
    if available >= needed:
        window_ids = np.arange(needed, dtype=np.int64) * available // needed
    else:
        warnings.warn(f"the validation split holds only {available} windows of {seq_len + 1} tokens but "
                      f"{num_batches} x {batch_size} = {needed} are asked for; reusing windows cyclically",
                      stacklevel=2)
        window_ids = np.arange(needed, dtype=np.int64) % available
    index = window_ids[:, None] * seq_len + np.arange(seq_len + 1, dtype=np.int64)
    rows = torch.from_numpy(np.asarray(val_tokens[index], dtype=np.int64))
    return list(rows.view(num_batches, batch_size, seq_len + 1).unbind(0))


def to_device(batch: torch.Tensor | DocumentBatch, device: torch.device | str) -> torch.Tensor | DocumentBatch:
    """Move a batch to `device`; asynchronous when it comes from pinned memory (CUDA)."""
    if isinstance(batch, DocumentBatch):
        return batch.to(device, non_blocking=True)
    return batch.to(device, non_blocking=batch.is_pinned())
