"""FLA's fused Triton kernels for the small ops around the mixers (CUDA only, optional).

RMSNorm, the gated output norm, the causal short convolution, SwiGLU and the LM head + loss are cheap
in FLOPs but, written in plain PyTorch under bf16 autocast, each saves or moves several full-size
(often float32) intermediates. FLA's fused kernels save only their inputs and compute in float32
inside the kernel, which is both what FLA's own models do (same numerics) and tens of GB less
activation memory at 48 x 1024 tokens. `model/kernels.py` decides once whether these run; the
functions here assume FLA is usable (CUDA tensors, FLA importable and not refused).
"""

from __future__ import annotations

import functools

import torch

from hybridlm.ops.cross_entropy import linear_cross_entropy as torch_linear_cross_entropy
from hybridlm.ops import gdn_custom_op  # noqa: F401 - registers hybridlm::gdn_chunk
from hybridlm.ops.gated_delta_rule import gated_delta_rule
from hybridlm.ops.gdn_fla import fla_function_with_raw_gates


@functools.lru_cache(maxsize=1)
def load() -> dict:
    """FLA's kernel functions by name, imported once. Raises BackendError when the core ones cannot be
    imported; the fused loss is optional (it needs torch.distributed.tensor): absent from the dict then."""
    from hybridlm.errors import BackendError

    try:
        from fla.modules.activations import swiglu
        from fla.modules.causal_conv1d import causal_conv1d
        from fla.modules.norm.fused_norm_gate import rms_norm_gated
        from fla.modules.norm.layernorm import rms_norm
    except Exception as exc:  # noqa: BLE001 - any import problem: FLA's layer kernels cannot run
        raise BackendError(f"FLA's fused layer kernels cannot be imported ({type(exc).__name__}: {exc})") from None
    kernels = {"rms_norm": rms_norm, "rms_norm_gated": rms_norm_gated, "causal_conv1d": causal_conv1d,
               "swiglu": swiglu}
    try:
        from fla.modules.fused_linear_cross_entropy import fused_linear_cross_entropy_loss

        kernels["linear_cross_entropy"] = fused_linear_cross_entropy_loss
    except Exception:  # noqa: BLE001 - the chunked PyTorch loss is used instead
        pass
    return kernels


def gdn_train(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens=None):
    """FLA's chunk kernel with the gates and q/k norms fused in, as FLA's GatedDeltaNet layer calls it
    (FLA's own autograd.Function, which keeps its intermediates for the backward); `cu_seqlens`
    (packed documents, batch 1) takes FLA's varlen path."""
    return fla_function_with_raw_gates(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens)


def gdn_train_op(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens=None):
    """The same call through the `hybridlm::gdn_chunk` custom op, for compiled blocks: Dynamo traces
    through it where FLA's function (marked torch.compiler.disable) would break the graph. It recomputes
    FLA's small intermediates in its backward instead of saving them (`hybridlm verify`'s compile rows
    check it against `gdn_train`). The op has no varlen form yet: packed documents are refused."""
    if cu_seqlens is not None:
        from hybridlm.errors import BackendError

        raise BackendError("compiled GDN blocks cannot take packed documents (cu_seqlens) yet; set "
                           "train.compile = false (or \"auto\", which compiles only attention blocks) with "
                           "data.packing = \"documents\"")
    return torch.ops.hybridlm.gdn_chunk(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval)


def gdn(q, k, v, g, beta, initial_state, output_final_state):
    """Prefill / decoding with a state: FLA's chunk kernel, or its fused recurrent one for short inputs."""
    return gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                            backend="fla", use_qk_l2norm_in_kernel=True)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if torch.is_autocast_enabled(x.device.type):
        # The norm's output feeds up to six projections, and autocast would cast an fp32 output to bf16
        # once per projection. Casting the input once instead (the kernel still normalises in fp32)
        # rounds it to bf16 first, as FLA's bf16 models do; the fp32 residual stream is untouched.
        x = x.to(torch.get_autocast_dtype(x.device.type))
    return load()["rms_norm"](x, weight, None, eps=eps)


def add_rms_norm(update: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(residual + update), residual + update) in one kernel, as FLA's blocks do before their MLP:
    the sum is normalised in float32 before it is stored in the residual's dtype, and the normalised
    output takes the update's dtype (bf16 under autocast, so no cast before the MLP's projections)."""
    return load()["rms_norm"](update, weight, None, residual=residual, eps=eps, prenorm=True)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return load()["rms_norm_gated"](x, gate, weight, None, activation="swish", eps=eps)


def short_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Causal depthwise conv + SiLU for a whole sequence (no cache); weight [D, 1, K]. With `cu_seqlens`
    (batch 1) FLA's varlen path restarts the convolution at each document."""
    varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    y, _ = load()["causal_conv1d"](x=x, weight=weight.to(x.dtype).squeeze(1), activation="silu", **varlen)
    return y


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return load()["swiglu"](gate, up)


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


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Training loss of `hidden @ weight.T` (mean over targets != -100) with FLA's fused linear CE.

    It computes the gradients chunk by chunk during the forward (one pass over bf16 logits, no
    recomputation), so it is only worth it when a backward follows: without grad mode (evaluation),
    or in float64 (FLA computes in float32 at most), the chunked PyTorch loss runs instead."""
    hidden2d = hidden.reshape(-1, hidden.shape[-1])
    if torch.is_autocast_enabled(hidden2d.device.type):  # custom kernels run outside autocast
        hidden2d = hidden2d.to(torch.get_autocast_dtype(hidden2d.device.type))
    if not torch.is_grad_enabled() or hidden2d.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return torch_linear_cross_entropy(hidden, weight, targets)
    head, bias = aligned_head(weight.to(hidden2d.dtype))
    # accumulate_grad_in_fp32=False: the LM-head gradient is summed over FLA's token chunks (6 of 8,192
    # rows at 48 x 1024) in bf16, each chunk's product accumulated in fp32 inside the GEMM and then
    # rounded: the order of rounding every other weight gradient gets under autocast. The fp32 option
    # runs those GEMMs in fp32 and cost 15 ms of a 472 ms step on an H100 (docs/gpu-verification.md).
    return load()["linear_cross_entropy"](hidden2d, targets.reshape(-1), head, bias,
                                          accumulate_grad_in_fp32=hidden2d.dtype == torch.float32)
