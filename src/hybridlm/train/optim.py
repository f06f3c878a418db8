"""AdamW with the usual exclusions from weight decay."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases, embeddings and the GDN decay parameters (A_log, dt_bias) are not decayed.

    All but the embeddings are the 1-D parameters."""
    return param.ndim < 2 or "embeddings" in name


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    eps: float, device_type: str) -> torch.optim.AdamW:
    decay, plain = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (plain if no_weight_decay(name, param) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    extra = {}
    if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **extra)
