"""Thin wrapper around flash-linear-attention's Triton gated delta rule kernels (CUDA only).

``fla`` is imported lazily and only for CUDA tensors: importing it is slow and pulls in Triton, which
CPU-only runs must never pay for. ``fla_usable`` is the single place that decides whether FLA may run.
"""

from __future__ import annotations

import functools
import os

import torch

from hybridlm.errors import BackendError
from hybridlm.ops.fla_compat import fla_compat_problem, installed_versions

FLA_INSTALL_HINT = "pip install flash-linear-attention==0.6.0"


@functools.lru_cache(maxsize=1)
def _fla_import_problem() -> str | None:
    """Import fla once; return why it failed (one line) or None.

    Before the import, Triton is told to keep its autotuning results in its cache (unless the user
    chose otherwise): FLA autotunes every kernel on first use, 79 s of a first step on a fresh H200,
    and with the results cached a later process starts in seconds."""
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    try:
        import fla  # noqa: F401
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception as exc:  # ImportError, or Triton/CUDA failures raised at import time
        return f"fla is not importable ({type(exc).__name__}: {exc}); install it with `{FLA_INSTALL_HINT}`"
    return None


def fla_usable(device: torch.device | str) -> tuple[bool, str]:
    """Whether FLA's kernels can run on ``device``, and a one-line reason either way.

    Called on every GDN layer's forward, so the answer is computed once per device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else device
    return _fla_usable_cached(str(device))


@functools.lru_cache(maxsize=None)
def _fla_usable_cached(device_name: str) -> tuple[bool, str]:
    device = torch.device(device_name)
    if device.type != "cuda":
        return False, f"FLA kernels need CUDA tensors, got device '{device}'; use backend='torch' on CPU"
    if not torch.cuda.is_available():
        return False, "FLA kernels need CUDA, but torch.cuda.is_available() is False"
    versions = installed_versions()
    problem = fla_compat_problem(versions["fla"], versions["triton"], torch.cuda.get_device_capability(device),
                                 versions["tilelang"] is not None)
    if problem is not None:
        return False, problem
    problem = _fla_import_problem()
    if problem is not None:
        return False, problem
    return True, f"flash-linear-attention {versions['fla']} kernels (triton {versions['triton']})"


def fla_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None,
    initial_state: torch.Tensor | None,
    output_final_state: bool,
    use_qk_l2norm_in_kernel: bool,
    mode: str,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run FLA's chunk (training) or fused recurrent (decoding) kernel with state layout [B, HV, K, V].

    FLA 0.6.0's fused recurrent kernel has no backward pass, so when autograd needs gradients the
    chunk kernel is used instead (same math, any T). `cu_seqlens` (batch 1) goes to FLA's varlen path,
    passed only when given, so the call without it is unchanged.
    """
    usable, reason = fla_usable(q.device)
    if not usable:
        raise BackendError(f"backend='fla' unavailable: {reason}")
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, beta, initial_state)
    )
    kernel = fused_recurrent_gated_delta_rule if mode == "recurrent" and not needs_grad else chunk_gated_delta_rule
    varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    # Keywords only: fused_recurrent's positional order is (q, k, v, g, gk, gv, beta, ...).
    return kernel(
        **varlen,
        q=q,
        k=k,
        v=v,
        g=g,
        beta=beta,
        scale=scale,
        initial_state=initial_state,
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
        state_v_first=False,
    )


def fla_chunk_with_raw_gates(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    allow_neg_eigval: bool,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Training forward with the gates fused into FLA's chunk kernel, as FLA's own layer calls it.

    `a` and `b` are the raw a_proj / b_proj outputs: the kernel computes g = -exp(A_log) *
    softplus(a + dt_bias) and beta = sigmoid(b) (x2 with allow_neg_eigval) itself, and L2-normalises
    q and k. The call is FLA's own `chunk_gated_delta_rule` (`fla_function_with_raw_gates`); compiled
    blocks run the same kernels through the `hybridlm::gdn_chunk` custom op (ops/gdn_custom_op.py).
    """
    usable, reason = fla_usable(q.device)
    if not usable:
        raise BackendError(f"backend='fla' unavailable: {reason}")
    return fla_function_with_raw_gates(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens)


def fla_function_with_raw_gates(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval: bool,
                                cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The training call through FLA's own `chunk_gated_delta_rule` (its autograd.Function, which
    saves its intermediates for the backward), as FLA's GatedDeltaNet layer makes it; no checks.
    With `cu_seqlens` (packed documents, batch 1) FLA's varlen path restarts the state at each."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    varlen = {} if cu_seqlens is None else {"cu_seqlens": cu_seqlens}
    o, _ = chunk_gated_delta_rule(
        **varlen,
        q=q, k=k, v=v, g=a, beta=b, initial_state=None, output_final_state=False,
        use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True, allow_neg_eigval=allow_neg_eigval,
        state_v_first=True, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias)
    return o
