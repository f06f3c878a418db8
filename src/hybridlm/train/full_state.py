"""The whole model and optimizer state of a run, whatever its parallelism (none, DDP, FSDP2).

Checkpoints hold full, unsharded tensors: the same safetensors files whether 1 rank wrote them or N,
so a run moves between world sizes and `eval`, `generate` and `export` read it unchanged. Gathering
goes through `torch.distributed.checkpoint.state_dict` with `full_state_dict` and `cpu_offload`:
every rank takes part (under FSDP2 each contributes its shards), rank 0 ends with the whole state on
the CPU and the others with nothing. Setting goes the other way: every rank passes the full state
read from the files and keeps its own part.

The optimizer state is handed over in torch's own layout, what `optimizer.state_dict()` gives on one
process (parameters numbered in param-group order), which is what the checkpoint files store; the
DCP helpers name parameters by their path instead, and the two functions below translate.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from hybridlm.runs.checkpoint import tied_names

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SET = StateDictOptions(full_state_dict=True)


def gather_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on rank 0 ({} on the others); a collective under FSDP2: call it on every rank.

    A tied weight appears once, under the alphabetically first of its names (as `save_checkpoint`
    writes a module's state)."""
    state = get_model_state_dict(model, options=_GATHER)
    for names in tied_names(model):
        for name in sorted(names)[1:]:
            state.pop(name, None)
    return state


def gather_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` of the unsharded model, on rank 0 ({} on the others); a collective."""
    state = get_optimizer_state_dict(model, optimizer, options=_GATHER)
    if not state or not state.get("param_groups"):
        return {}
    order = [name for group in state["param_groups"] for name in group["params"]]
    index = {name: i for i, name in enumerate(order)}
    return {"state": {index[name]: entry for name, entry in state["state"].items()},
            "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                             for group in state["param_groups"]]}


def set_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every name, as `checkpoint.read_model_state` returns it) on every rank."""
    set_model_state_dict(model, tensors, options=_SET)


def set_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load `optimizer.state_dict()`-style full state (parameters numbered) on every rank.

    Call it before the first step, while no parameter holds a gradient (the DCP helper then builds
    AdamW's state with one update at learning rate 0, which leaves the weights as they are). The
    optimizer may keep the given tensors (AdamW's `step` counters are not copied): pass state read from
    a checkpoint, not another optimizer's live state."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {"state": {order[i]: entry for i, entry in state["state"].items()},
               "param_groups": [{**group, "params": [order[i] for i in group["params"]]}
                                for group in state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=_SET)

