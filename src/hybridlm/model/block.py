"""Pre-norm residual block: x + mixer(norm(x)), then x + mlp(norm(x)). FLA's names: attn, mlp."""

from __future__ import annotations

import torch
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.attention import Attention
from hybridlm.model.gated_deltanet import GatedDeltaNet
from hybridlm.model.mlp import SwiGLU
from hybridlm.model.norm import RMSNorm


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        mixer = Attention if self.layer_type == "attention" else GatedDeltaNet
        self.attn = mixer(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.mlp_intermediate_size)

    def forward(self, x: torch.Tensor, cache: dict | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        """`cu_seqlens`: packed documents (B = 1), passed to the mixer only when given."""
        varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        update = self.attn(self.attn_norm(x), cache=cache, **varlen)
        hidden, x = self.mlp_norm.add_and_norm(update, x)  # x + update, normalised: fused on CUDA
        return x + self.mlp(hidden)
