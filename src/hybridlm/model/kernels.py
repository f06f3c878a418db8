"""The kernels a model runs, chosen once: FLA's fused Triton kernels on CUDA, PyTorch's anywhere.

`resolve_kernels(choice, device)` decides from `model.kernels` ("auto" | "fla" | "torch"), the
device and what FLA provides, and returns one `Kernels` record; `HybridLM` hands it to its modules
when it is built or moved to another device, so forward code reads the same whichever kernels
run, with no device or backend checks inside it. Both flavours of every entry take the same
arguments and compute the same function (FLA's semantics); `describe()` says what runs.

`for_compile=True` keeps FLA only where `torch.compile` cannot do the work itself (the GDN chunk
kernel, a custom op that compiled graphs trace through, and the fused loss, outside the compiled
blocks) and uses the PyTorch norms, SwiGLU and short convolution, which Inductor fuses into the
surrounding graph.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from hybridlm.errors import BackendError
from hybridlm.ops.cross_entropy import linear_cross_entropy as torch_linear_cross_entropy
from hybridlm.ops.documents import positions_in_documents
from hybridlm.ops.decode_step import fla_gdn_step, fla_short_conv_step, torch_gdn_step, torch_short_conv_step
from hybridlm.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_with_gates

CHOICES = ("auto", "fla", "torch")


# ------------------------------------------------------------------ PyTorch kernels (any device)
def torch_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight, the statistics in float32 (float64 for float64 input)."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(y.dtype)).to(x.dtype)


def torch_add_rms_norm(update: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    total = residual + update
    return torch_rms_norm(total, weight, eps), total


def torch_gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(x) * silu(gate) (FLA's FusedRMSNormGated with the swish gate)."""
    y = torch_rms_norm(x, weight, eps)
    gf = gate.float() if gate.dtype in (torch.float16, torch.bfloat16) else gate
    return (y.to(gf.dtype) * F.silu(gf)).to(x.dtype)


def torch_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def torch_short_conv(x: torch.Tensor, weight: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """silu(causal depthwise conv(x)) over a whole sequence from zeros; x [B, T, D], weight [D, 1, K].

    Written as K shifted multiply-adds in float32: Inductor fuses them (and the silu, and the split
    of the projection that feeds them) into one kernel forward and one backward, where F.conv1d's
    depthwise backward is a slow cuDNN call. With `cu_seqlens` (packed documents, batch 1) the tap
    that reaches s positions back is dropped wherever that is before the document's start, so every
    document starts from zeros as if alone."""
    k, t = weight.shape[-1], x.shape[1]
    acc = torch.promote_types(x.dtype, torch.float32)
    w = weight.to(acc).squeeze(1)  # [D, K]
    padded = F.pad(x.to(acc), (0, 0, k - 1, 0))
    in_document = None if cu_seqlens is None else positions_in_documents(cu_seqlens, t)[None, :, None]
    y = padded[:, k - 1:] * w[:, k - 1]
    for j in range(k - 1):
        tap = padded[:, j:j + t] * w[:, j]
        if in_document is not None:  # this tap reads k-1-j positions back
            tap = tap * (in_document >= k - 1 - j)
        y = y + tap
    return F.silu(y).to(x.dtype)


def torch_gdn_train(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens=None):
    return gated_delta_rule_with_gates(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, backend="torch",
                                       cu_seqlens=cu_seqlens)


def torch_gdn(q, k, v, g, beta, initial_state, output_final_state):
    return gated_delta_rule(q, k, v, g, beta, initial_state=initial_state, output_final_state=output_final_state,
                            backend="torch", use_qk_l2norm_in_kernel=True)


# ------------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Kernels:
    """One function per piece of the model that has a fast kernel; `names` says which runs."""

    gdn_train: Callable = torch_gdn_train          # (q, k, v, a_raw, b_raw, A_log, dt_bias, neg, cu_seqlens=None) -> o
    gdn: Callable = torch_gdn                      # (q, k, v, g, beta, state, output_state) -> (o, state)
    short_conv: Callable = torch_short_conv        # (x, weight, cu_seqlens=None) -> silu(conv(x)), no cache
    # decoding, one token, the state updated in place (ops/decode_step.py):
    gdn_step: Callable = torch_gdn_step            # (q, k, v, a_raw, b_raw, A_log, dt_bias, neg, state) -> o
    short_conv_step: Callable = torch_short_conv_step  # (x [B, D], weight, conv_state [B, D, K]) -> y
    rms_norm: Callable = torch_rms_norm
    add_rms_norm: Callable = torch_add_rms_norm
    gated_rms_norm: Callable = torch_gated_rms_norm
    swiglu: Callable = torch_swiglu
    linear_cross_entropy: Callable = torch_linear_cross_entropy
    names: dict[str, str] = field(default_factory=lambda: dict.fromkeys(KERNEL_NAMES, "torch"))
    reason: str = "pure PyTorch"

    def describe(self) -> dict[str, str]:
        """{kernel: 'fla' | 'torch', ..., 'reason': why}: for logs, doctor and results.json."""
        return {**self.names, "reason": self.reason}

    @property
    def backend(self) -> str:
        """'fla' when the GDN layers run FLA's kernels, else 'torch'."""
        return self.names["gdn"]


KERNEL_NAMES = ("gdn", "short_conv", "rms_norm", "gated_rms_norm", "swiglu", "linear_cross_entropy", "gdn_step",
                "short_conv_step")
TORCH_KERNELS = Kernels()


def resolve_kernels(choice: str, device: torch.device | str, for_compile: bool = False,
                    strict: bool = True) -> Kernels:
    """The record for `model.kernels = choice` on `device`.

    When "fla" cannot run there: BackendError, or with `strict=False` (a model built on the CPU before
    it moves to its GPU) a record whose kernels raise that error when called."""
    if choice not in CHOICES:
        raise BackendError(f"model.kernels must be one of {', '.join(CHOICES)}, got {choice!r}")
    device = torch.device(device)
    if choice == "torch":
        return replace(TORCH_KERNELS, reason="model.kernels = 'torch'")
    from hybridlm.ops.gdn_fla import fla_usable

    usable, reason = fla_usable(device)
    if usable:
        try:
            return _fla_kernels(for_compile, reason)
        except BackendError as exc:
            usable, reason = False, str(exc)
    if not usable:
        if choice == "fla":
            message = f"model.kernels = 'fla' cannot run: {reason}"
            if strict:
                raise BackendError(message)
            return _unavailable(message)
        if device.type == "cuda":
            _warn_fallback_once(reason)
    return replace(TORCH_KERNELS, reason=reason)


@functools.lru_cache(maxsize=None)
def _warn_fallback_once(reason: str) -> None:
    warnings.warn(f"FLA kernels unavailable, using the slower PyTorch kernels: {reason}", stacklevel=3)


@functools.lru_cache(maxsize=None)
def _fla_kernels(for_compile: bool, reason: str) -> Kernels:
    from hybridlm.model import fused

    available = fused.load()
    chosen: dict[str, Callable] = {"gdn_train": fused.gdn_train_op if for_compile else fused.gdn_train,
                                   "gdn": fused.gdn,
                                   "gdn_step": fla_gdn_step, "short_conv_step": fla_short_conv_step}
    if "linear_cross_entropy" in available:
        chosen["linear_cross_entropy"] = fused.linear_cross_entropy
    if not for_compile:
        chosen.update(short_conv=fused.short_conv, rms_norm=fused.rms_norm, add_rms_norm=fused.add_rms_norm,
                      gated_rms_norm=fused.gated_rms_norm, swiglu=fused.swiglu)
    names = {name: "fla" if name in chosen else "torch" for name in KERNEL_NAMES}
    return replace(TORCH_KERNELS, **chosen, names=names, reason=reason + (" (compiled blocks)" if for_compile else ""))


def _unavailable(message: str) -> Kernels:
    def refuse(*args, **kwargs):
        raise BackendError(message)

    return Kernels(**{name: refuse for name in ("gdn_train", "gdn", "short_conv", "rms_norm", "add_rms_norm",
                                                "gated_rms_norm", "swiglu", "linear_cross_entropy", "gdn_step",
                                                "short_conv_step")},
                   names=dict.fromkeys(KERNEL_NAMES, "unavailable"), reason=message)
