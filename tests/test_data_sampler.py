"""TrainSampler coverage, order, exhaustion, resume and sharding; validation batches; to_device."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from hybridlm.data import TrainSampler, to_device, validation_batches
from hybridlm.errors import DataError, DataExhausted

SEQ = 8


def _tokens(num_windows: int, extra: int = 1) -> np.ndarray:
    """Token i has value i, so a row's first token tells which window it is."""
    return np.arange(num_windows * SEQ + extra, dtype=np.uint32)


def _window_ids(batch: torch.Tensor) -> list[int]:
    first = batch[:, 0]
    assert torch.equal(batch, first[:, None] + torch.arange(SEQ + 1))  # rows are whole windows
    assert bool((first % SEQ == 0).all())
    return (first // SEQ).tolist()


def _quiet_batches(sampler: TrainSampler, count: int) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [sampler.next_batch() for _ in range(count)]


def test_every_window_exactly_once_per_epoch():
    tokens = _tokens(60, extra=5)  # 5 leftover tokens: not enough for another window
    sampler = TrainSampler(tokens, batch_size=6, seq_len=SEQ, seed=3)
    assert sampler.num_windows == 60
    seen = [w for b in _quiet_batches(sampler, 10) for w in _window_ids(b)]
    assert sorted(seen) == list(range(60)) and seen != list(range(60))  # all, once, shuffled
    targets = np.concatenate([np.asarray(tokens[w * SEQ + 1:w * SEQ + SEQ + 1]) for w in seen])
    assert sorted(targets.tolist()) == list(range(1, 60 * SEQ + 1))  # each token is a target exactly once
    assert sampler.epoch == 1 and sampler.position == 60


def test_batches_spanning_an_epoch_end_continue_with_the_next_permutation():
    sampler = TrainSampler(_tokens(25), batch_size=4, seq_len=SEQ, seed=0)
    stream = [w for b in _quiet_batches(sampler, 20) for w in _window_ids(b)]  # 80 windows = 3.2 epochs
    for epoch in range(3):
        assert sorted(stream[25 * epoch:25 * (epoch + 1)]) == list(range(25))
    assert stream[:25] != stream[25:50]  # reshuffled
    assert stream == [w for b in _quiet_batches(TrainSampler(_tokens(25), 4, SEQ, seed=0), 20) for w in _window_ids(b)]
    assert stream != [w for b in _quiet_batches(TrainSampler(_tokens(25), 4, SEQ, seed=1), 20) for w in _window_ids(b)]


def test_repeat_warns_once_per_epoch():
    sampler = TrainSampler(_tokens(10), batch_size=4, seq_len=SEQ, seed=0, on_exhausted="repeat")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):  # 40 windows: epochs 1, 2 and 3 begin
            sampler.next_batch()
    messages = [str(w.message) for w in caught]
    assert messages == [f"training data exhausted after 10 windows (epoch {e}); starting epoch {e + 1} reshuffled"
                        for e in range(3)]


def test_stop_raises_data_exhausted_after_the_last_full_batch():
    sampler = TrainSampler(_tokens(10), batch_size=4, seq_len=SEQ, seed=0, on_exhausted="stop")
    first_two = [w for _ in range(2) for w in _window_ids(sampler.next_batch())]
    assert len(set(first_two)) == 8
    with pytest.raises(DataExhausted, match="training data exhausted after 10 windows"):
        sampler.next_batch()


@pytest.mark.parametrize("steps_before", [3, 7])  # mid-epoch, and just before an epoch boundary
def test_state_round_trip_gives_the_identical_remaining_sequence(steps_before):
    tokens = _tokens(30)
    original = TrainSampler(tokens, batch_size=4, seq_len=SEQ, seed=11)
    _quiet_batches(original, steps_before)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["num_windows"] == 30 and state["position"] == 4 * steps_before and state["seq_len"] == SEQ
    restored = TrainSampler(tokens, batch_size=4, seq_len=SEQ, seed=999)  # the state's seed wins
    restored.load_state_dict(state)
    expected, actual = _quiet_batches(original, 12), _quiet_batches(restored, 12)  # crosses epoch boundaries
    assert all(torch.equal(a, b) for a, b in zip(expected, actual))


def test_state_from_other_data_is_rejected():
    state = TrainSampler(_tokens(30), batch_size=4, seq_len=SEQ, seed=0).state_dict()
    with pytest.raises(DataError, match="saved for 30 windows"):
        TrainSampler(_tokens(31), batch_size=4, seq_len=SEQ, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="incomplete"):
        TrainSampler(_tokens(30), batch_size=4, seq_len=SEQ, seed=0).load_state_dict({"seed": 0})


@pytest.mark.filterwarnings("ignore:training data exhausted")
def test_ranks_take_interleaved_rows_of_the_global_batch():
    tokens = _tokens(48)
    single = TrainSampler(tokens, batch_size=6, seq_len=SEQ, seed=5)
    ranks = [TrainSampler(tokens, batch_size=3, seq_len=SEQ, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(16):  # two epochs
        global_batch = _window_ids(single.next_batch())
        parts = [_window_ids(s.next_batch()) for s in ranks]
        assert parts[0] == global_batch[0::2] and parts[1] == global_batch[1::2]
        assert not set(parts[0]) & set(parts[1])


def test_memmap_input_and_output_format(tmp_path):
    path = tmp_path / "train.bin"
    np.arange(4 * SEQ + 1, dtype=np.uint16).tofile(path)
    sampler = TrainSampler(np.memmap(path, dtype=np.uint16, mode="r"), batch_size=2, seq_len=SEQ, seed=0)
    batch = sampler.next_batch()
    assert batch.dtype == torch.int64 and batch.shape == (2, SEQ + 1) and batch.is_contiguous()
    _window_ids(batch)


def test_sampler_rejects_too_little_data_and_bad_arguments():
    with pytest.raises(DataError, match="seq_len 8 is larger than the training split \\(8 tokens\\)"):
        TrainSampler(np.arange(SEQ), batch_size=1, seq_len=SEQ, seed=0)
    with pytest.raises(DataError, match="on_exhausted"):
        TrainSampler(_tokens(4), batch_size=1, seq_len=SEQ, seed=0, on_exhausted="loop")
    with pytest.raises(DataError, match="rank 2"):
        TrainSampler(_tokens(4), batch_size=1, seq_len=SEQ, seed=0, rank=2, world_size=2)


def test_validation_batches_are_fixed_and_evenly_spaced():
    tokens = _tokens(100)
    first = validation_batches(tokens, batch_size=5, seq_len=SEQ, num_batches=4)
    second = validation_batches(tokens, batch_size=5, seq_len=SEQ, num_batches=4)
    assert len(first) == 4 and all(b.shape == (5, SEQ + 1) and b.dtype == torch.int64 for b in first)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    ids = [w for b in first for w in _window_ids(b)]
    assert ids == [i * 5 for i in range(20)]  # 20 of 100 windows, every fifth


def test_validation_batches_reuse_windows_cyclically_with_a_warning():
    with pytest.warns(UserWarning, match="only 3 windows"):
        batches = validation_batches(_tokens(3), batch_size=2, seq_len=SEQ, num_batches=4)
    assert [w for b in batches for w in _window_ids(b)] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_validation_split_shorter_than_a_window_is_a_data_error():
    with pytest.raises(DataError, match="seq_len 8 is larger than the validation split \\(5 tokens\\); lower "
                                        "data.seq_len or raise data.val_fraction"):
        validation_batches(np.arange(5), batch_size=1, seq_len=SEQ, num_batches=1)


def test_to_device_moves_the_batch():
    batch = TrainSampler(_tokens(4), batch_size=2, seq_len=SEQ, seed=0).next_batch()
    moved = to_device(batch, "cpu")
    assert moved.device.type == "cpu" and torch.equal(moved, batch)
    if torch.cuda.is_available():
        pinned = TrainSampler(_tokens(4), batch_size=2, seq_len=SEQ, seed=0, pin_memory=True).next_batch()
        assert pinned.is_pinned() and torch.equal(to_device(pinned, "cuda").cpu(), batch)
