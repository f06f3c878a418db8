"""FLA's fused Triton kernels for the small ops around the mixers (CUDA only, optional).

RMSNorm, the gated output norm, the causal short convolution, SwiGLU and the LM head + loss are cheap
in FLOPs but, written in plain PyTorch under bf16 autocast, each saves or moves several full-size
(often float32) intermediates. FLA's fused kernels save only their inputs and compute in float32
inside the kernel, which is both what FLA's own models do (same numerics) and tens of GB less
activation memory at 48 x 1024 tokens. Every function here returns None when the kernels cannot
be used (CPU tensors, FLA missing or refused), and the caller falls back to its PyTorch code.
"""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=None)
def _kernels(device_type: str):
    if device_type != "cuda":
        return None
    from hybridlm.ops.gdn_fla import fla_usable

    usable, _ = fla_usable("cuda")
    if not usable:
        return None
    try:
        from fla.modules.activations import swiglu
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.modules.norm.fused_norm_gate import rms_norm_gated
        from fla.modules.norm.layernorm import rms_norm
    except Exception:  # noqa: BLE001 - any import problem means: use the PyTorch path
        return None
    kernels = {"rms_norm": rms_norm, "rms_norm_gated": rms_norm_gated, "causal_conv1d": causal_conv1d,
               "swiglu": swiglu}
    try:  # its own try: it needs torch.distributed.tensor, which the others do not
        from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss

        kernels["linear_cross_entropy"] = fused_linear_cross_entropy_loss
    except Exception:  # noqa: BLE001 - the chunked PyTorch loss is used instead
        pass
    return kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    k = _kernels(x.device.type)
    return None if k is None else k["rms_norm"](x, weight, None, eps=eps)


def add_rms_norm(update: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rms_norm(residual + update), residual + update) in one kernel, as FLA's blocks do before their MLP:
    the sum is normalised in float32 before it is stored in the residual's dtype, and the normalised
    output takes the update's dtype (bf16 under autocast, so no cast before the MLP's projections)."""
    k = _kernels(update.device.type)
    if k is None:
        return None
    return k["rms_norm"](update, weight, None, residual=residual, eps=eps, prenorm=True)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
    k = _kernels(x.device.type)
    return None if k is None else k["rms_norm_gated"](x, gate, weight, None, activation="swish", eps=eps)


def short_conv_silu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """Causal depthwise conv + SiLU for a whole sequence (no cache); weight [D, 1, K]."""
    k = _kernels(x.device.type)
    if k is None:
        return None
    y, _ = k["causal_conv1d"](x=x, weight=weight.squeeze(1), activation="silu")
    return y


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor | None:
    k = _kernels(gate.device.type)
    return None if k is None else k["swiglu"](gate, up)


# Vocabulary rows are padded to a multiple of this for the loss GEMMs: with an odd row count (GPT-2's
# 50,257) the logits' leading dimension is misaligned and cuBLAS falls back to slow sm75-era kernels
# (seen in the H100 profile of docs/gpu-verification.md), the reason nanoGPT pads to 50,304.
VOCAB_ALIGNMENT = 128
# The logit given to padding rows: exp(PAD_LOGIT - max) is exactly 0 in float32, so the loss, the
# softmax and every gradient equal the unpadded ones.
PAD_LOGIT = -1.0e4


def aligned_head(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight padded with zero rows to VOCAB_ALIGNMENT, a bias that sends padding logits to PAD_LOGIT),
    or (weight, None) when already aligned. Differentiable in `weight` (the padding's gradient is dropped)."""
    vocab = weight.shape[0]
    pad = -vocab % VOCAB_ALIGNMENT
    if pad == 0:
        return weight, None
    bias = torch.zeros(vocab + pad, dtype=weight.dtype, device=weight.device)
    bias[vocab:] = PAD_LOGIT
    return torch.nn.functional.pad(weight, (0, 0, 0, pad)), bias


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Training loss of `hidden @ weight.T` (mean over targets != -100) with FLA's fused linear CE.

    It computes the gradients chunk by chunk during the forward (one pass over bf16 logits, no
    recomputation), so it is only worth it when a backward follows: None without grad mode."""
    k = _kernels(hidden.device.type)
    if k is None or "linear_cross_entropy" not in k or not torch.is_grad_enabled():
        return None
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if torch.is_autocast_enabled(hidden2d.device.type):  # custom kernels run outside autocast
        hidden2d = hidden2d.to(torch.get_autocast_dtype(hidden2d.device.type))
    if hidden2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return None  # FLA's kernels compute in float32 at most: float64 keeps the exact PyTorch loss
    head, bias = aligned_head(weight.to(hidden2d.dtype))
    # accumulate_grad_in_fp32=False: the LM-head gradient is summed over FLA's token chunks (6 of 8,192
    # rows at 48 x 1024) in bf16, each chunk's product accumulated in fp32 inside the GEMM and then
    # rounded: the order of rounding every other weight gradient gets under autocast. The fp32 option
    # runs those GEMMs in fp32 and cost 15 ms of a 472 ms step on an H100 (docs/gpu-verification.md).
    return k["linear_cross_entropy"](hidden2d, targets.reshape(-1), head, bias,
                                     accumulate_grad_in_fp32=hidden2d.dtype == torch.float32)
