"""Fast generation: prompts prefilled with the training kernels, then a fixed-shape step per token that a CUDA
graph replays.

- Batching. Prompts are sorted by length, longest first, and end together at position P (the longest); each
  run of prompts of one length is prefilled as one batch (up to PREFILL_TOKENS tokens a call) into its rows
  of the preallocated `ModelCache` (`ModelCache.rows`) with the training kernels, so every row holds exactly
  the state it would hold alone, and attention never looks before a row's `start`. Batches are padded to
  the next bucket size with rows that are finished from the start, so one captured graph serves every batch
  size up to its bucket.
- The step reads the last token and writes the next one, with no host work: embedding, every layer's
  one-token path (GDN state, conv tail and KV slot updated in place), the LM head, sampling on the device
  (`model/sampling.py`), the finished flags, the token stored in the output buffer. Every tensor it touches
  is allocated before it runs, and the position is a device tensor.
- CUDA graphs (on CUDA unless autocast is on: autocast would cast weights inside the graph): one per (bucket,
  length rounded up, sampling settings, eos), captured on the cache's own tensors before a prefill first
  writes them, after warm-up steps on a side stream (FLA autotunes, cuBLAS chooses its kernels); kept for
  later calls (the `max_slots` latest).
- eos: each row's finished flag is set on the device; `generate` asks the host "all finished?" every
  `eos_check_every` tokens only, then trims the tokens past the last row's eos.
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from hybridlm.model.cache import ModelCache
from hybridlm.model.sampling import Sampling, sample

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_ROUNDING = 256  # graphs are keyed by cache length rounded up to this (one graph for nearby lengths)
WARMUP_STEPS = 3
PREFILL_TOKENS = 1 << 18  # tokens per prefill call (rows of one length at a time): bounds its activations


@dataclass
class DecodeSlot:
    """A cache with the static buffers of the step around it, and its captured graph."""

    cache: ModelCache
    sampling: Sampling
    eos_token_id: int | None
    token: torch.Tensor            # [B] the last token (the step's input, then its output)
    out: torch.Tensor              # [B, N] tokens produced so far
    written: torch.Tensor          # () long: how many columns of `out` hold tokens
    finished: torch.Tensor         # [B] bool
    seen: torch.Tensor | None      # [B, V] bool: tokens in each row (for the repetition penalty)
    generator: torch.Generator | None
    graph: object | None = None    # torch.cuda.CUDAGraph
    graph_version: int = -1        # the cache's version it was captured on

    def tensors(self) -> list[torch.Tensor]:
        own = [self.token, self.out, self.written, self.finished] + ([self.seen] if self.seen is not None else [])
        return own + self.cache.tensors()


@dataclass
class _Run:
    slot: DecodeSlot
    rows: int                      # real rows (the rest pad the bucket)
    order: list[int]               # slot row r holds prompt order[r]
    inverse: torch.Tensor          # prompt i sits in slot row inverse[i]


class Decoder:
    """Generation for one model; keeps its captured graphs (at most `max_slots`) between calls.
    `hold_model=False` keeps only a weak reference (for a registry keyed by the model itself)."""

    def __init__(self, model, cuda_graphs: bool | None = None, eos_check_every: int = 16,
                 buckets: Sequence[int] | None = None, max_slots: int = 2, hold_model: bool = True):
        self._model = (lambda: model) if hold_model else weakref.ref(model)
        self.device = model.lm_head.weight.device
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a model on a CUDA device, this one is on {self.device}")
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if eos_check_every < 1:
            raise ValueError(f"eos_check_every must be >= 1, got {eos_check_every}")
        self.eos_check_every = eos_check_every
        self.buckets = tuple(sorted(buckets)) if buckets is not None else (BUCKETS if self.cuda_graphs else None)
        self.max_slots = max_slots
        self._slots: OrderedDict[tuple, DecodeSlot] = OrderedDict()
        self._pool = None

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this Decoder no longer exists")
        return model

    # ------------------------------------------------------------------------------ public
    @torch.no_grad()
    def generate(self, prompts, max_new_tokens: int, sampling: Sampling = Sampling(),
                 eos_token_id: int | None = None, seed: int | None = None) -> torch.Tensor:
        """New tokens [B, n] for the prompts (lists of ids, or a [B, T] tensor), n <= max_new_tokens; rows
        that finished are padded with eos, and generation stops once every row has finished."""
        with _eval(self.model):
            return self.decode(self.start(prompts, max_new_tokens, sampling, eos_token_id, seed), max_new_tokens)

    @torch.no_grad()
    def stream(self, prompts, max_new_tokens: int, sampling: Sampling = Sampling(),
               eos_token_id: int | None = None, seed: int | None = None) -> Iterator[torch.Tensor]:
        """The next token of every row [B] as each step produces it (finished rows repeat eos); stops when
        every row has finished."""
        with _eval(self.model):
            run = self.start(prompts, max_new_tokens, sampling, eos_token_id, seed)
            yield run.slot.token.index_select(0, run.inverse)
            for _ in self._steps(run, max_new_tokens, check_every=1):
                yield run.slot.token.index_select(0, run.inverse)

    # --------------------------------------------------------------------------- a call
    @torch.no_grad()
    def start(self, prompts, max_new_tokens: int, sampling: Sampling = Sampling(), eos_token_id: int | None = None,
              seed: int | None = None) -> _Run:
        """Lay the prompts out, prefill them and sample each row's first new token (`generate`'s first half;
        the model should be in eval mode)."""
        rows = _as_rows(prompts, self.model.config.vocab_size)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        longest = max(len(r) for r in rows)
        slot = self.slot(self._bucket(len(rows)), longest + max_new_tokens, max_new_tokens, sampling, eos_token_id)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        inverse = torch.empty(len(rows), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(rows))
        self.prefill(slot, [rows[i] for i in order], seed)
        return _Run(slot, len(rows), order, inverse.to(self.device))

    @torch.no_grad()
    def decode(self, run: _Run, max_new_tokens: int) -> torch.Tensor:
        """The rest of a started call: steps until max_new_tokens or every row's eos; the new tokens [B, n]."""
        produced = 1
        for _ in self._steps(run, max_new_tokens, check_every=self.eos_check_every):
            produced += 1
        out = run.slot.out[:, :produced].index_select(0, run.inverse)
        return _trim_after_eos(out, run.slot.eos_token_id)

    def _steps(self, run: _Run, max_new_tokens: int, check_every: int) -> Iterator[None]:
        """Steps 1 .. max_new_tokens-1 (the prefill sampled token 0), until every row has finished."""
        slot = run.slot
        for step in range(1, max_new_tokens):
            if slot.eos_token_id is not None and step % check_every == 0 and bool(slot.finished.all()):
                return
            self.step(slot)
            yield

    # ----------------------------------------------------------------------- the pieces
    def slot(self, bucket: int, length: int, new_tokens: int, sampling: Sampling,
             eos_token_id: int | None) -> DecodeSlot:
        """The slot for this shape and these settings, kept from an earlier call or made (and captured).
        Without attention layers the state does not depend on the length, so neither does the slot."""
        dtype = self.dtype()
        rounded, columns = (-(-n // LENGTH_ROUNDING) * LENGTH_ROUNDING for n in (length, new_tokens))
        attention = bool(self.model.config.attention_layer_set)
        key = (bucket, rounded if attention else None, columns, sampling, eos_token_id, dtype)
        if key in self._slots:
            self._slots.move_to_end(key)
            return self._slots[key]
        while len(self._slots) >= self.max_slots:
            self._slots.popitem(last=False)
        slot = self.new_slot(bucket, rounded, sampling, eos_token_id, dtype, out_tokens=columns)
        self._slots[key] = slot
        return slot

    @torch.no_grad()
    def new_slot(self, bucket: int, max_length: int | None, sampling: Sampling, eos_token_id: int | None,
                 dtype: torch.dtype, out_tokens: int | None = None) -> DecodeSlot:
        """A slot whose cache holds `max_length` positions (None: growing, as a conversation's) and whose
        output buffer `out_tokens` tokens a row (default max_length)."""
        device, vocab = self.device, self.model.config.vocab_size
        cache = self.model.new_cache(batch_size=bucket, max_length=max_length, dtype=dtype)
        self.stack_weights(cache)
        generator = None if sampling.greedy else torch.Generator(device=device)
        columns = max(out_tokens or max_length, WARMUP_STEPS + 1)  # a capture's warm-up writes columns too
        slot = DecodeSlot(cache, sampling, eos_token_id,
                          token=torch.zeros(bucket, dtype=torch.long, device=device),
                          out=torch.zeros(bucket, columns, dtype=torch.long, device=device),
                          written=torch.zeros((), dtype=torch.long, device=device),
                          finished=torch.zeros(bucket, dtype=torch.bool, device=device),
                          seen=torch.zeros(bucket, vocab, dtype=torch.bool, device=device)
                          if sampling.penalised else None,
                          generator=generator)
        if self._graphs_now():
            self.capture(slot, preserve=False)
        return slot

    def stack_weights(self, cache: ModelCache) -> None:
        """Every layer's stacked decode weights, from the weights as they are now (in place)."""
        for block, layer in zip(self.model.model.layers, cache.layers):
            block.attn.stack_decode_weights(layer)

    @torch.no_grad()
    def prefill(self, slot: DecodeSlot, rows: list[list[int]], seed: int | None) -> None:
        """Reset the slot, prefill `rows` (longest first) right-aligned at the longest's end, sample the
        first new token of each row."""
        cache, model = slot.cache, self.model
        cache.reset()
        self.stack_weights(cache)
        longest = len(rows[0])
        logits = torch.zeros(cache.batch_size, model.config.vocab_size, device=self.device)
        first = 0
        if slot.seen is not None:
            slot.seen.zero_()
        for length, group in itertools.groupby(rows, key=len):
            group = list(group)
            per_call = max(1, PREFILL_TOKENS // length)
            for part in range(0, len(group), per_call):
                ids = torch.tensor(group[part:part + per_call], dtype=torch.long, device=self.device)
                last = first + ids.shape[0]
                view = cache.rows(first, last, start=longest - length)
                hidden = model.model(ids, cache=view)
                logits[first:last] = model.lm_head(hidden[:, -1]).float()
                if slot.seen is not None:
                    slot.seen[first:last].scatter_(1, ids, True)
                first = last
        if first < cache.batch_size:  # rows padding the bucket hold nothing
            cache.rows(first, cache.batch_size, start=longest)
        cache.set_length(longest)
        slot.written.zero_()
        slot.finished.zero_()
        if slot.eos_token_id is not None:
            slot.finished[first:] = True
        if slot.generator is not None:
            if seed is None:
                slot.generator.seed()
            else:
                slot.generator.manual_seed(seed)
        self.emit(slot, logits)

    @torch.no_grad()
    def feed(self, slot: DecodeSlot, ids: list[int]) -> None:
        """More tokens for a one-row slot that already holds some (a conversation's next turn); samples the
        token after them."""
        cache = slot.cache
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        cache.ensure_capacity(cache.length + len(ids))
        hidden = self.model.model(tokens, cache=cache)
        cache.advance(len(ids))
        if slot.seen is not None:
            slot.seen.scatter_(1, tokens, True)
        slot.written.zero_()
        slot.finished.zero_()
        self.emit(slot, self.model.lm_head(hidden[:, -1]))

    @torch.no_grad()
    def step(self, slot: DecodeSlot) -> None:
        """One token for every row: the captured graph when there is one, else the same work eagerly."""
        cache = slot.cache
        if slot.graph is not None or self._graphs_now():
            if cache.growable and cache.length + 1 > cache.capacity:
                cache.ensure_capacity(cache.length + 1)  # a longer buffer: the graph must be captured again
            if slot.graph is None or slot.graph_version != cache.version:
                self.capture(slot, preserve=True)
            slot.graph.replay()
            cache.advance_host(1)
        else:
            self.device_step(slot)

    def device_step(self, slot: DecodeSlot) -> None:
        """The step's device work (what a graph captures): the last token in, the next one out."""
        hidden = self.model.model(slot.token[:, None], cache=slot.cache)
        logits = self.model.lm_head(hidden[:, -1])
        slot.cache.advance(1)
        self.emit(slot, logits)

    def emit(self, slot: DecodeSlot, logits: torch.Tensor) -> None:
        """Sample from logits [B, V], apply eos, store the token (fixed shapes, no host reads)."""
        token = sample(logits, slot.sampling, slot.generator, slot.seen)
        if slot.eos_token_id is not None:
            token = torch.where(slot.finished, slot.eos_token_id, token)
            slot.finished |= token == slot.eos_token_id
        slot.token.copy_(token)
        slot.out.index_copy_(1, slot.written.view(1), token[:, None])
        slot.written.add_(1)
        if slot.seen is not None:
            slot.seen.scatter_(1, token[:, None], True)

    @torch.no_grad()
    def capture(self, slot: DecodeSlot, preserve: bool) -> None:
        """Capture `device_step` on the slot's tensors. Warm-up and capture run real steps: with `preserve`
        (a cache already holding tokens) every tensor is saved first and restored after, else the slot is
        left empty. (They also draw from the generator: a prefill reseeds it; a conversation's later draws
        stay reproducible, the capture happening at the same point for the same inputs.)"""
        if slot.cache.growable:  # the warm-up steps must not outgrow the buffers being captured
            slot.cache.ensure_capacity(slot.cache.length + WARMUP_STEPS + 2)
        saved = [t.clone() for t in slot.tensors()] if preserve else None
        host = (slot.cache.length, list(slot.cache.start_host))
        slot.graph = None
        slot.written.zero_()  # the warm-up steps write tokens from the first column of `out` on
        graph = self.record(lambda: self.device_step(slot), slot.generator)
        if saved is not None:
            for t, s in zip(slot.tensors(), saved):
                t.copy_(s)
            slot.cache.length, slot.cache.start_host = host
            slot.cache.advance_host(0)
        else:
            slot.cache.reset()
        slot.graph, slot.graph_version = graph, slot.cache.version

    def record(self, step, generator: torch.Generator | None):
        """A CUDA graph of `step()`, after WARMUP_STEPS eager calls on a side stream (FLA's autotuning and
        cuBLAS's first calls must not happen during capture). Graphs share one memory pool."""
        torch.cuda.synchronize(self.device)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                step()
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        if generator is not None:
            graph.register_generator_state(generator)
        with torch.cuda.graph(graph, pool=self._pool):
            step()
        torch.cuda.synchronize(self.device)
        return graph

    # ------------------------------------------------------------------------------ helpers
    def _bucket(self, rows: int) -> int:
        if self.buckets is None:
            return rows
        return next((b for b in self.buckets if b >= rows), -(-rows // 64) * 64)

    def dtype(self) -> torch.dtype:
        """The dtype of the activations (and so of the caches): autocast's when it is on, else the weights'."""
        if torch.is_autocast_enabled(self.device.type):
            return torch.get_autocast_dtype(self.device.type)
        return self.model.lm_head.weight.dtype

    def _graphs_now(self) -> bool:
        return self.cuda_graphs and not torch.is_autocast_enabled(self.device.type)


class _eval:
    """Eval mode inside, the caller's mode restored after."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _as_rows(prompts, vocab_size: int) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim != 2 or prompts.shape[1] == 0:
            raise ValueError("input_ids must be [batch, length] with at least one token")
        prompts = prompts.tolist()
    rows = [[int(t) for t in row] for row in prompts]
    if not rows:
        raise ValueError("no prompts to generate from")
    for i, row in enumerate(rows):
        if not row:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
        bad = next((t for t in row if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ValueError(f"prompt {i} holds token id {bad}, outside the vocabulary 0..{vocab_size - 1}")
    return rows


def _trim_after_eos(out: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """Drop the columns after the last row's first eos (the eos checks run only every few tokens)."""
    if eos_token_id is None or out.shape[1] == 0:
        return out
    is_eos = out == eos_token_id
    ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, out.shape[1])
    return out[:, :int(ends.max())]
