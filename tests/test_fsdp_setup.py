"""How the parallel setup is decided and how state moves in and out of it, in one process: the parallel
mode ("auto" by memory), FSDP2 on a one-process gloo group (mixed precision, HSDP mesh checks,
gradient accumulation without reduction), the full state gathered and set, and the global batch kept
on resume across world sizes. The multi-process runs are in test_distributed.py."""

import copy

import pytest
import torch
import torch.distributed as dist

from hybridlm.config import resolve
from hybridlm.config.train_config import FsdpConfig
from hybridlm.errors import ConfigError
from hybridlm.model import HybridLM
from hybridlm.train.full_state import gather_model_state, gather_optimizer_state, set_model_state, set_optimizer_state
from hybridlm.train.global_batch import keep_global_batch, recorded_global_batch, recorded_validation_rows
from hybridlm.train.optim import build_optimizer
from hybridlm.train.parallel import DDP_STATE_FRACTION, no_sync_for, parallel_mode, shard_model, training_state_bytes

GB = 1 << 30


def test_parallel_modes_and_the_auto_policy():
    assert parallel_mode("auto", 1, state_bytes=100 * GB, device_bytes=GB) == "none"
    assert parallel_mode("auto", 8, state_bytes=30 * GB, device_bytes=80 * GB) == "ddp"
    assert parallel_mode("auto", 8, state_bytes=int(DDP_STATE_FRACTION * 80 * GB) + 1, device_bytes=80 * GB) == "fsdp"
    assert parallel_mode("auto", 8, replicate=2) == "fsdp"  # HSDP asked for
    assert parallel_mode("fsdp", 2) == "fsdp" and parallel_mode("ddp", 2) == "ddp"
    # one process: wrapped only inside a process group (torchrun --nproc_per_node=1)
    assert parallel_mode("fsdp", 1) == "none" and parallel_mode("fsdp", 1, grouped=True) == "fsdp"
    assert parallel_mode("ddp", 1, grouped=True) == "ddp"
    with pytest.raises(ConfigError, match="each rank would train its own copy"):
        parallel_mode("none", 2)
    with pytest.raises(ConfigError, match="train.parallel must be one of auto, none, ddp, fsdp"):
        resolve(preset="tiny", values={"train.parallel": "zero3"})
    with pytest.raises(ConfigError, match="train.fsdp.replicate must be at least 1"):
        resolve(preset="tiny", values={"train.fsdp.replicate": 0})


def test_training_state_counts_weights_gradients_and_both_adam_moments():
    model = HybridLM(resolve(preset="tiny").model)
    assert training_state_bytes(model) == 16 * sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- FSDP2 on one process
@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def tiny_parts(shard: bool, precision: str = "fp32", **fsdp):
    torch.manual_seed(0)
    model = HybridLM(resolve(preset="tiny").model)
    if shard:
        shard_model(model, torch.device("cpu"), FsdpConfig(**fsdp), precision)
    return model, build_optimizer(model, 1e-2, 0.1, (0.9, 0.95), 1e-8, "cpu")


def step(model, optimizer, micro_batches=1):
    x = torch.randint(0, 1024, (2 * micro_batches, 33), generator=torch.Generator().manual_seed(2))
    for i, rows in enumerate(x.chunk(micro_batches)):
        with (no_sync_for(model)() if i < micro_batches - 1 else torch.enable_grad()):
            (model(rows[:, :-1], labels=rows[:, 1:], return_logits=False).loss / micro_batches).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_sharded_state_gathers_to_the_plain_models_and_sets_back(one_process_group):
    plain, plain_opt = tiny_parts(shard=False)
    sharded, sharded_opt = tiny_parts(shard=True)
    for _ in range(2):
        step(plain, plain_opt, micro_batches=2)
        step(sharded, sharded_opt, micro_batches=2)  # accumulation: no reduction until the last micro-batch
    gathered, expected = gather_model_state(sharded), plain.state_dict()
    assert list(gathered) == list(expected) and all(torch.equal(gathered[k], expected[k]) for k in expected)
    optim, expected_optim = gather_optimizer_state(sharded, sharded_opt), plain_opt.state_dict()
    assert optim["param_groups"] == expected_optim["param_groups"]
    assert all(torch.equal(optim["state"][i][key], expected_optim["state"][i][key])
               for i in expected_optim["state"] for key in ("exp_avg", "exp_avg_sq", "step"))
    # a fresh sharded model takes the plain model's state and continues exactly as the plain one
    fresh, fresh_opt = tiny_parts(shard=True)
    set_model_state(fresh, copy.deepcopy(plain.state_dict()))  # fresh tensors, as read from a checkpoint
    set_optimizer_state(fresh, fresh_opt, copy.deepcopy(plain_opt.state_dict()))
    step(plain, plain_opt)
    step(fresh, fresh_opt)
    after, expected = gather_model_state(fresh), plain.state_dict()
    assert all(torch.equal(after[k], expected[k]) for k in expected)


def test_bf16_precision_gathers_bf16_weights_and_keeps_float32_masters(one_process_group):
    model, _ = tiny_parts(shard=True, precision="bf16")
    block = model.model.layers[0]
    block.unshard()
    assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
    block.reshard()
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    fp32_gather, _ = tiny_parts(shard=True, precision="bf16", mixed_precision=False)
    fp32_gather.model.layers[0].unshard()
    assert {p.dtype for p in fp32_gather.model.layers[0].parameters()} == {torch.float32}


def test_hsdp_replicas_must_divide_the_ranks(one_process_group):
    with pytest.raises(ConfigError, match="train.fsdp.replicate = 2 does not divide the 1 processes"):
        tiny_parts(shard=True, replicate=2)


def test_gathered_tied_weights_are_stored_once_under_the_first_name():
    torch.manual_seed(0)
    model = HybridLM(resolve(preset="tiny", values={"model.tie_word_embeddings": True}).model)
    state = gather_model_state(model)
    assert "lm_head.weight" in state and "model.embeddings.weight" not in state  # as save_checkpoint writes it


# ------------------------------------------------------------------------- the global batch on resume
def test_resume_on_another_world_size_keeps_the_global_batch():
    saved = resolve(preset="tiny", values={"train.batch_size": 4, "train.grad_accum": 2})  # on 2 ranks: 16 windows
    config, note = keep_global_batch(saved, saved, 16, world_size=2)
    assert config is saved and note is None
    config, note = keep_global_batch(saved, saved, 16, world_size=1)
    assert (config.train.batch_size, config.train.grad_accum) == (4, 4)
    assert note == ("resuming on 1 process a run that trains on global batches of 16 windows: "
                    "train.grad_accum 2 -> 4")
    config, _ = keep_global_batch(saved, saved, 16, world_size=8)  # 2 windows a rank: a smaller micro-batch
    assert (config.train.batch_size, config.train.grad_accum) == (2, 1)
    chosen = resolve(base=saved, values={"train.batch_size": 2, "train.grad_accum": 8})
    assert keep_global_batch(chosen, saved, 16, world_size=1)[0] is chosen  # the user's split of the same 16
    with pytest.raises(ConfigError, match="train.batch_size 2 x train.grad_accum 8 x 2 processes = 32 windows per "
                                          "step, but this run trains on 16"):
        keep_global_batch(chosen, saved, 16, world_size=2)
    with pytest.raises(ConfigError, match="global batches of 16 windows, which 3 processes cannot share evenly; "
                                          "resume it on 1, 2, 4, 8, 16 processes"):
        keep_global_batch(saved, saved, 16, world_size=3)


def test_checkpoints_from_before_the_record_give_their_global_batch_from_the_sampler():
    saved = resolve(preset="tiny", values={"train.batch_size": 4, "train.grad_accum": 2})
    old = {"sampler": {"batch_size": 4, "world_size": 2, "position": 80}}
    assert recorded_global_batch(old, saved) == 16 and recorded_validation_rows(old, saved) == 8
    new = {**old, "global_batch": 16, "val_batch_rows": 8}
    assert recorded_global_batch(new, saved) == 16 and recorded_validation_rows(new, saved) == 8
