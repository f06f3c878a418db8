"""The public gated delta rule op: checks shapes once, then dispatches to a backend and a mode.

Backends: "torch" (pure PyTorch, any device), "fla" (flash-linear-attention Triton kernels, CUDA only)
and "auto" (FLA when usable for these tensors, else torch). Modes: "chunk" (training), "recurrent"
(decoding, step by step) and "auto" (recurrent for short inputs, T <= RECURRENT_MAX_T, else chunk).
Semantics follow FLA 0.6.0's ``chunk_gated_delta_rule`` with the state laid out [B, HV, K, V].
With ``cu_seqlens`` (packed documents, inputs flattened to batch 1, FLA's varlen convention) the state
restarts at every document: FLA's varlen kernels on CUDA, per-document calls of the same PyTorch
kernels elsewhere (the definition, so the two can be compared).
"""

from __future__ import annotations

import functools
import warnings

import torch

from hybridlm.errors import BackendError
from hybridlm.ops import gdn_torch
from hybridlm.ops.documents import check_cu_seqlens, segments
from hybridlm.ops.gdn_fla import fla_chunk_with_raw_gates, fla_gated_delta_rule, fla_usable

BACKENDS = ("auto", "torch", "fla")
MODES = ("auto", "chunk", "recurrent")
RECURRENT_MAX_T = 16  # decoding / short prompts: a few recurrent steps beat chunk padding to 64


def available_backends(device: torch.device | str | None = None) -> dict[str, tuple[bool, str]]:
    """Backend name -> (available, one-line reason) for tensors on ``device`` (default: CUDA, FLA's home)."""
    device = "cuda" if device is None else device
    return {
        "torch": (True, "pure PyTorch, runs on any device"),
        "fla": fla_usable(device),
    }


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn "auto" into a concrete backend; raise BackendError if "fla" was asked for but cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    usable, reason = fla_usable(device)
    if backend == "fla" and not usable:
        raise BackendError(f"backend='fla' unavailable: {reason}")
    if not usable and torch.device(device).type == "cuda":
        _warn_fallback_once(reason)
    return "fla" if usable else "torch"


@functools.lru_cache(maxsize=None)
def _warn_fallback_once(reason: str) -> None:
    """kernels='auto' on CUDA without usable FLA: say so (once), then run the PyTorch kernels."""
    warnings.warn(f"FLA kernels unavailable, using the slower PyTorch GDN kernels: {reason}", stacklevel=3)


def resolve_mode(mode: str, seq_len: int) -> str:
    """Turn "auto" into "recurrent" for short (decoding) inputs and "chunk" otherwise."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "auto":
        return "recurrent" if seq_len <= RECURRENT_MAX_T else "chunk"
    return mode


def _expect_shape(name: str, tensor: torch.Tensor, expected: tuple[int, ...], layout: str) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} must have shape {layout} = {list(expected)}, got {list(tensor.shape)}")


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None = None,
) -> None:
    """Raise ValueError naming the first argument whose shape or device does not fit the others."""
    if q.dim() != 4:
        raise ValueError(f"q must have shape [B, T, H, K], got {list(q.shape)}")
    batch, seq_len, num_qk_heads, key_dim = q.shape
    _expect_shape("k", k, tuple(q.shape), "[B, T, H, K] like q")
    if v.dim() != 4 or tuple(v.shape[:2]) != (batch, seq_len):
        raise ValueError(f"v must have shape [B, T, HV, V] with B={batch}, T={seq_len}, got {list(v.shape)}")
    num_v_heads, value_dim = v.shape[2], v.shape[3]
    if num_v_heads % num_qk_heads != 0:
        raise ValueError(
            f"v has HV={num_v_heads} heads, which must be a multiple of the H={num_qk_heads} heads of q and k"
        )
    _expect_shape("g", g, (batch, seq_len, num_v_heads), "[B, T, HV]")
    _expect_shape("beta", beta, (batch, seq_len, num_v_heads), "[B, T, HV]")
    states = batch
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, batch, seq_len)
        states = cu_seqlens.numel() - 1  # one state per document
    if initial_state is not None:
        _expect_shape("initial_state", initial_state, (states, num_v_heads, key_dim, value_dim),
                      "[N, HV, K, V] (N documents)" if cu_seqlens is not None else "[B, HV, K, V]")
    named = {"k": k, "v": v, "g": g, "beta": beta, "initial_state": initial_state, "cu_seqlens": cu_seqlens}
    for name, tensor in named.items():
        if tensor is not None and tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}; put all inputs on one device")


def gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    mode: str = "auto",
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule: ``S_t = exp(g_t)(I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T scale q_t``.

    Shapes: q, k ``[B, T, H, K]``; v ``[B, T, HV, V]`` (HV a multiple of H; value head j uses q/k head
    ``j // (HV // H)``); g (log decay, <= 0) and beta ``[B, T, HV]``; initial_state ``[B, HV, K, V]``.
    ``scale`` defaults to ``K ** -0.5``. With ``use_qk_l2norm_in_kernel`` q and k are first normalised
    as ``x / sqrt(sum(x^2) + 1e-6)``. Returns ``o [B, T, HV, V]`` in v's dtype and the final state
    ``[B, HV, K, V]`` (float32, or float64 for float64 inputs) when ``output_final_state``, else None.

    ``cu_seqlens`` (int32 ``[N + 1]``, inputs ``[1, T, ...]``): N packed documents, each starting from its
    own state (``initial_state`` and the final state are then ``[N, HV, K, V]``), as FLA's varlen kernels.
    """
    check_inputs(q, k, v, g, beta, initial_state, cu_seqlens)
    chosen_backend = resolve_backend(backend, q.device)
    if cu_seqlens is not None and chosen_backend == "fla":
        args = (q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)
        return fla_gated_delta_rule(*args, mode="chunk", cu_seqlens=cu_seqlens)
    if cu_seqlens is not None:
        return _per_document(q, k, v, g, beta, scale, initial_state, output_final_state, mode,
                             use_qk_l2norm_in_kernel, cu_seqlens)
    chosen_mode = resolve_mode(mode, q.shape[1])
    args = (q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel)
    if chosen_backend == "fla":
        return fla_gated_delta_rule(*args, mode=chosen_mode)
    if chosen_mode == "chunk":
        return gdn_torch.chunk_gated_delta_rule(*args)
    return gdn_torch.recurrent_gated_delta_rule(*args)


def _per_document(q, k, v, g, beta, scale, initial_state, output_final_state, mode, use_qk_l2norm_in_kernel,
                  cu_seqlens) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The varlen semantics in PyTorch: each document through the PyTorch kernels on its own, from its own
    state. Exact by construction (nothing crosses a boundary); the cost is one kernel call per document."""
    outputs, finals = [], []
    for d, (start, end) in enumerate(segments(cu_seqlens)):
        state = None if initial_state is None else initial_state[d:d + 1]
        piece = (x[:, start:end] for x in (q, k, v, g, beta))
        kernel = (gdn_torch.chunk_gated_delta_rule if resolve_mode(mode, end - start) == "chunk"
                  else gdn_torch.recurrent_gated_delta_rule)
        o, final = kernel(*piece, scale, state, output_final_state, use_qk_l2norm_in_kernel)
        outputs.append(o)
        finals.append(final)
    return torch.cat(outputs, dim=1), (torch.cat(finals) if output_final_state else None)


def gated_delta_rule_with_gates(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    allow_neg_eigval: bool = False,
    backend: str = "auto",
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """The GDN layer's training call, from its raw gate projections (no state in or out).

    ``beta = sigmoid(b)`` (x2 with ``allow_neg_eigval``), ``g = -exp(A_log) * softplus(a + dt_bias)``,
    q and k L2-normalised, then the gated delta rule. With FLA the gates and norms are fused into its
    chunk kernel, exactly as FLA's own layer calls it; this is the function the model trains with, so
    ``hybridlm verify`` checks this call. a, b: ``[B, T, HV]``; A_log, dt_bias: ``[HV]``. ``cu_seqlens``:
    packed documents (batch 1), the state restarting at each, as in ``gated_delta_rule``.
    """
    if backend == "fla" or (backend == "auto" and resolve_backend("auto", q.device) == "fla"):
        if cu_seqlens is not None:
            check_cu_seqlens(cu_seqlens, q.shape[0], q.shape[1])
        return fla_chunk_with_raw_gates(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, cu_seqlens)
    g, beta = gdn_torch.gdn_gates(a, b, A_log, dt_bias, allow_neg_eigval,
                                  torch.promote_types(q.dtype, torch.float32))  # float64 in tests
    o, _ = gated_delta_rule(q, k, v, g, beta, backend="torch", use_qk_l2norm_in_kernel=True,
                            cu_seqlens=cu_seqlens)
    return o
