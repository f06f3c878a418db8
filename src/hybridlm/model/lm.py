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
from hybridlm.model.cache import AttentionLayerSpec, GDNLayerSpec, ModelCache
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

    def forward(self, input_ids: torch.Tensor, cache: ModelCache | None = None,
                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
        x = self.embeddings(input_ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=cache.layers[i] if cache is not None else None, **varlen)
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
    def use_kernels(self, kernels: Kernels, compiled: Kernels | None = None) -> None:
        """Give every module the kernel record (done on build and on every move to another device); the
        blocks the trainer compiled (`compiled_layers`) get `compiled`, the record for compiled code."""
        self.kernels = kernels
        self._kernels_device = self.lm_head.weight.device
        compiled_modules = {id(m) for i in self.compiled_layers for m in self.model.layers[i].modules()}
        for module in self.modules():
            if isinstance(getattr(type(module), "kernels", None), Kernels):  # the modules that run kernels
                module.kernels = compiled if compiled is not None and id(module) in compiled_modules else kernels

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.cuda()`, `.cpu()` end here: re-choose the kernels when the device changes."""
        out = super()._apply(fn, recurse)
        device = self.lm_head.weight.device
        if device != getattr(self, "_kernels_device", None):
            compiled = (resolve_kernels(self.config.kernels, device, for_compile=True, strict=False)
                        if self.compiled_layers else None)
            self.use_kernels(resolve_kernels(self.config.kernels, device, strict=False), compiled)
        return out

    kernels: Kernels
    compiled_layers: tuple[int, ...] = ()  # the blocks the trainer compiled (see train/setup.py)

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
                cache: ModelCache | None = None, return_logits: bool = True,
                cu_seqlens: torch.Tensor | None = None) -> LMOutput:
        """input_ids: [B, T]. `labels[:, t]` is the target of position t (already shifted, as in
        nanoGPT; -100 is ignored). With `return_logits=False` the loss is computed chunk by chunk
        from the hidden states and no full logits tensor is ever made.

        `cu_seqlens` (int32 [N + 1], FLA's varlen convention; input_ids [1, T]): N packed documents that
        share nothing (GDN state, short convolution, attention and RoPE positions all restart at each).
        The labels say which targets count: the target at a document's last position is the next
        document's first token, so it must be -100 (`hybridlm.data.packing` builds such labels), and
        the loss is then the mean over the documents' own next tokens."""
        if cu_seqlens is not None and cache is not None:
            raise ValueError("packed documents (cu_seqlens) are for training and scoring, not with a cache")
        hidden = self.model(input_ids, cache=cache, **({} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}))
        if cache is not None:
            cache.advance(input_ids.shape[1])
        loss = logits = None
        if labels is not None:
            loss = self.kernels.linear_cross_entropy(hidden, self.lm_head.weight, labels)
        if return_logits:
            logits = self.lm_head(hidden)
        return LMOutput(loss=loss, logits=logits, cache=cache)

    def new_cache(self, batch_size: int | None = None, max_length: int | None = None,
                  dtype: torch.dtype | None = None) -> ModelCache:
        """Empty decoding state for every layer (`model/cache.py`). With `batch_size` its buffers are
        allocated now, for `max_length` positions (in `dtype`, default the weights'); without, on first use,
        the attention buffer growing as needed."""
        c = self.config
        specs = [GDNLayerSpec(c.gdn_value_heads, c.head_dim, c.head_v_dim, 2 * c.num_heads * c.head_dim
                              + c.gdn_value_heads * c.head_v_dim, c.conv_size if c.use_short_conv else 0)
                 if kind == "gdn" else AttentionLayerSpec(c.attention.kv_heads, c.attention_head_dim)
                 for kind in c.layer_types]
        rotary = next((layer.attn.rotary for layer in self.model.layers if layer.layer_type == "attention"), None)
        device = self.lm_head.weight.device
        return ModelCache(specs, c.attention.window_size, None if rotary is None else rotary.inv_freq,
                          batch_size=batch_size, max_length=max_length, device=device,
                          dtype=dtype or self.lm_head.weight.dtype)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 100, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eos_token_id: int | None = None,
                 seed: int | None = None, repetition_penalty: float = 1.0) -> torch.Tensor:
        """Sample continuations of the rows of input_ids [B, T]; returns [B, T + new] (rows that hit eos
        are padded with eos). Prompts of different lengths: `hybridlm.model.generation.generate_batch`."""
        from hybridlm.model.generation import decoder_for
        from hybridlm.model.sampling import Sampling

        sampling = Sampling(temperature, top_k, top_p, repetition_penalty)
        if max_new_tokens < 1:
            return input_ids
        new = decoder_for(self).generate(input_ids, max_new_tokens, sampling, eos_token_id, seed)
        return torch.cat([input_ids, new], dim=1)

    # ------------------------------------------------------------ accounting
    def num_parameters(self, non_embedding: bool = False) -> int:
        from hybridlm.model.accounting import count_parameters

        counts = count_parameters(self)
        return counts["non_embedding"] if non_embedding else counts["total"]


__all__ = ["HybridLM", "LMOutput", "Backbone", "IGNORE_INDEX"]
