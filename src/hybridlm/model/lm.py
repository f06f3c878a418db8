"""The hybrid language model: embeddings, a stack of GDN / attention blocks, norm, LM head.

Module paths equal FLA's `GatedDeltaNetForCausalLM` (`model.embeddings`, `model.layers.{i}`,
`model.norm`, `lm_head`), so state dicts move between the two without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.block import Block
from hybridlm.model.cache import ModelCache
from hybridlm.model.gated_deltanet import GatedDeltaNet
from hybridlm.model.kernels import Kernels, resolve_kernels
from hybridlm.model.norm import RMSNorm
from hybridlm.ops.cross_entropy import IGNORE_INDEX


@dataclass
class LMOutput:
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: ModelCache | None = None


class Backbone(nn.Module):
    """Everything but the LM head (FLA's `GatedDeltaNetModel`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)

    def forward(self, input_ids: torch.Tensor, cache: ModelCache | None = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=cache.layers[i] if cache is not None else None)
        return self.norm(x)


class HybridLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embeddings.weight
        self.use_kernels(resolve_kernels(config.kernels, self.lm_head.weight.device, strict=False))

    # ---------------------------------------------------------------- kernels
    def use_kernels(self, kernels: Kernels) -> None:
        """Give every module the kernel record (done on build and on every move to another device)."""
        self.kernels = kernels
        self._kernels_device = self.lm_head.weight.device
        for module in self.modules():
            if isinstance(getattr(type(module), "kernels", None), Kernels):  # the modules that run kernels
                module.kernels = kernels

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.cuda()`, `.cpu()` end here: re-choose the kernels when the device changes."""
        out = super()._apply(fn, recurse)
        if self.lm_head.weight.device != getattr(self, "_kernels_device", None):
            self.use_kernels(resolve_kernels(self.config.kernels, self.lm_head.weight.device,
                                             for_compile=self.kernels_for_compile, strict=False))
        return out

    kernels: Kernels
    kernels_for_compile = False  # set by the trainer's compile step (see train/setup.py)

    def _init_weights(self, module: nn.Module) -> None:
        """FLA's initialisation: normal(0, initializer_range) for linear, conv and embedding weights."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, GatedDeltaNet):
            module.reset_decay_parameters()
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: ModelCache | None = None, return_logits: bool = True) -> LMOutput:
        """input_ids: [B, T]. `labels[:, t]` is the target of position t (already shifted, as in
        nanoGPT; -100 is ignored). With `return_logits=False` the loss is computed chunk by chunk
        from the hidden states and no full logits tensor is ever made."""
        hidden = self.model(input_ids, cache=cache)
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        loss = logits = None
        if labels is not None:
            loss = self.kernels.linear_cross_entropy(hidden, self.lm_head.weight, labels)
        if return_logits:
            logits = self.lm_head(hidden)
        return LMOutput(loss=loss, logits=logits, cache=cache)

    def new_cache(self) -> ModelCache:
        return ModelCache.empty(self.config.layer_types)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 seed: int | None = None) -> torch.Tensor:
        """Sample continuations; returns [B, T + new] (rows that hit eos are padded with eos)."""
        from hybridlm.model.generation import generate_tokens

        new = list(generate_tokens(self, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, eos_token_id=eos_token_id, seed=seed))
        if not new:
            return input_ids
        return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)

    # ------------------------------------------------------------ accounting
    def num_parameters(self, non_embedding: bool = False) -> int:
        from hybridlm.model.accounting import count_parameters

        counts = count_parameters(self)
        return counts["non_embedding"] if non_embedding else counts["total"]


__all__ = ["HybridLM", "LMOutput", "Backbone", "IGNORE_INDEX"]
