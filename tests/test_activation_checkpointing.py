"""Activation checkpointing per block: the same losses and gradients, the same parameter names, and
"selective" keeping the matmuls that "full" recomputes."""

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hybridlm.config import resolve
from hybridlm.errors import ConfigError
from hybridlm.model import HybridLM
from hybridlm.runs import RunDir
from hybridlm.train import train
from hybridlm.train.activation_checkpointing import apply_activation_checkpointing, checkpointing_of

MATMULS = {"mm", "addmm", "bmm", "baddbmm"}


def tiny_model(mode: str) -> HybridLM:
    torch.manual_seed(0)
    model = HybridLM(resolve(preset="tiny").model)
    apply_activation_checkpointing(model, mode)
    return model


def batch() -> torch.Tensor:
    return torch.randint(0, 1024, (4, 65), generator=torch.Generator().manual_seed(1))


def loss_and_grads(model: HybridLM):
    x = batch()
    loss = model(x[:, :-1], labels=x[:, 1:], return_logits=False).loss
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_same_loss_gradients_and_names_as_without(mode):
    plain, checkpointed = tiny_model("none"), tiny_model(mode)
    assert [checkpointing_of(b) for b in checkpointed.model.layers] == [mode, mode]
    assert list(checkpointed.state_dict()) == list(plain.state_dict())  # FLA's names: checkpoints load either way
    assert [n for n, _ in checkpointed.named_parameters()] == [n for n, _ in plain.named_parameters()]
    loss, grads = loss_and_grads(plain)
    loss_c, grads_c = loss_and_grads(checkpointed)
    assert torch.equal(loss, loss_c)
    assert all(torch.equal(grads[k], grads_c[k]) for k in grads)


def test_selective_keeps_the_matmuls_that_full_recomputes():
    counts = {}
    for mode in ("none", "full", "selective"):
        model, x = tiny_model(mode), batch()
        with OpCounter() as counter:
            model(x[:, :-1], labels=x[:, 1:], return_logits=False).loss.backward()
        counts[mode] = counter.counts
    matmuls = {mode: sum(n for op, n in c.items() if op in MATMULS) for mode, c in counts.items()}
    assert matmuls["selective"] == matmuls["none"] < matmuls["full"]  # no matmul runs twice under selective
    assert sum(counts["selective"].values()) > sum(counts["none"].values())  # the cheap ops are recomputed


def test_evaluation_and_copies_run_the_block_as_it_is():
    plain, checkpointed = tiny_model("none"), tiny_model("full")
    x = batch()
    with torch.no_grad():
        assert torch.equal(plain(x).logits, checkpointed(x).logits)
    twin = copy.deepcopy(checkpointed)
    assert all(block.forward.__self__ is block for block in twin.model.layers)  # bound to the copy's own blocks


def test_an_unknown_mode_is_a_one_line_error():
    with pytest.raises(ConfigError, match="train.activation_checkpointing must be one of none, full, selective"):
        resolve(preset="tiny", values={"train.activation_checkpointing": "some"})
    with pytest.raises(ConfigError, match="must be one of none, full, selective"):
        apply_activation_checkpointing(HybridLM(resolve(preset="tiny").model), "every-other")


def test_a_checkpointed_run_trains_bit_identically(tmp_path):
    losses = {}
    for mode in ("none", "selective"):
        config = resolve(preset="tiny", values={"train.max_steps": 6, "train.log_interval": 1, "train.eval_interval": 6,
                                                "train.save_interval": 6, "train.activation_checkpointing": mode})
        results = train(config, out=tmp_path / mode, progress=False)
        assert results["environment"]["activation_checkpointing"] == mode
        losses[mode] = [e["loss"] for e in RunDir(tmp_path / mode).read_metrics() if e["event"] == "train"]
    assert losses["selective"] == losses["none"] and len(losses["none"]) == 6
