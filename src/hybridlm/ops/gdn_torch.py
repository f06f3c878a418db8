"""Pure-PyTorch gated delta rule: a naive reference loop, a recurrent (decoding) path and a chunked (training) path.

All three share one contract (that of FLA 0.6.0's ``chunk_gated_delta_rule`` with the state laid out
``[B, HV, K, V]``), so they can check each other and stand in for FLA's kernels on any device:

    S_t = exp(g_t) * (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,      o_t = S_t^T (scale * q_t)

Inputs are ``q, k: [B, T, H, K]``, ``v: [B, T, HV, V]``, ``g, beta: [B, T, HV]``; value head ``j`` reads
query/key head ``j // (HV // H)``. Arithmetic runs in ``promote_types(input dtype, float32)`` so bf16/fp16
inputs accumulate in float32 while float64 inputs stay exact enough for tight reference tests.
Shape checking lives in the public op (``gated_delta_rule.py``); these functions assume valid shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

L2NORM_EPS = 1e-6  # FLA's l2norm: x / sqrt(sum(x^2) + eps)


def l2_normalize(x: Tensor, eps: float = L2NORM_EPS) -> Tensor:
    """Normalise along the last dim exactly as FLA's ``l2norm`` (eps inside the square root)."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def compute_dtype_for(*tensors: Tensor) -> torch.dtype:
    """float32 for half-precision inputs, float64 when any input is float64."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return dtype


def _to_head_first(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None,
    initial_state: Tensor | None,
    use_qk_l2norm_in_kernel: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Cast to the compute dtype, normalise/scale q,k, expand them to HV heads and move heads before time.

    Returns ``q*scale, k, v: [B, HV, T, *]``, ``g, beta: [B, HV, T]`` and the initial state ``[B, HV, K, V]``
    (zeros when absent), all in the compute dtype.
    """
    dtype = compute_dtype_for(q, k, v, g, beta)
    batch, _, num_qk_heads, key_dim = k.shape
    num_v_heads, value_dim = v.shape[2], v.shape[3]
    q, k = q.to(dtype), k.to(dtype)
    if use_qk_l2norm_in_kernel:
        q, k = l2_normalize(q), l2_normalize(k)
    q = q * (key_dim**-0.5 if scale is None else scale)
    group = num_v_heads // num_qk_heads
    if group > 1:
        q, k = q.repeat_interleave(group, dim=2), k.repeat_interleave(group, dim=2)
    if initial_state is None:
        state = torch.zeros(batch, num_v_heads, key_dim, value_dim, dtype=dtype, device=v.device)
    else:
        state = initial_state.to(dtype)
    return (
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.to(dtype).transpose(1, 2),
        g.to(dtype).transpose(1, 2),
        beta.to(dtype).transpose(1, 2),
        state,
    )


def naive_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Reference: the defining formula, one explicit ``[K, K]`` transition matrix per step.

    Slow on purpose and written independently of the delta-form used by the fast paths, so tests can
    catch an algebra slip in either. Use it in float64 as ground truth.
    """
    out_dtype = v.dtype
    q, k, v, g, beta, state = _to_head_first(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    identity = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    outputs = []
    for t in range(k.shape[2]):
        k_t, v_t, b_t = k[:, :, t], v[:, :, t], beta[:, :, t, None, None]
        transition = torch.exp(g[:, :, t, None, None]) * (identity - b_t * k_t[..., :, None] * k_t[..., None, :])
        state = transition @ state + b_t * k_t[..., :, None] * v_t[..., None, :]
        outputs.append(torch.einsum("bhkv,bhk->bhv", state, q[:, :, t]))
    o = torch.stack(outputs, dim=1).to(out_dtype)
    return o, (state if output_final_state else None)


def recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Step-by-step delta form for decoding: a handful of batched ops per token, O(K*V) state only.

    Per step: decay the state, write ``u = beta * (v - S^T k)`` (the part of ``v`` the state does not
    yet predict), add ``k u^T``, read ``S^T q``. Out-of-place throughout so autograd works.
    """
    out_dtype = v.dtype
    q, k, v, g, beta, state = _to_head_first(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    # Per-step slices come from unbind (not [:, :, t]) so backward stacks gradients instead of
    # zero-filling a full-size tensor per step.
    steps = zip(
        q.unsqueeze(-2).unbind(2),  # [B, HV, 1, K]
        k.unsqueeze(-2).unbind(2),
        v.unsqueeze(-2).unbind(2),  # [B, HV, 1, V]
        torch.exp(g)[..., None, None].unbind(2),
        beta[..., None, None].unbind(2),
    )
    outputs = []
    for q_t, k_t, v_t, decay_t, beta_t in steps:
        state = state * decay_t
        update = beta_t * (v_t - k_t @ state)  # [B, HV, 1, V]
        state = state + k_t.transpose(-1, -2) @ update
        outputs.append(q_t @ state)
    o = torch.cat(outputs, dim=2).transpose(1, 2).to(out_dtype)
    return o, (state if output_final_state else None)


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunked (WY / UT-transform) form for training: batched matmuls except one short loop over chunks.

    Within a chunk with cumulative log-decay ``G_r`` and state ``S`` at its start, the per-step updates
    ``u_r = beta_r (v_r - exp(g_r) S_{r-1}^T k_r)`` satisfy the unit-lower-triangular system
    ``(I + A) U = beta V - (beta exp(G) K) S`` with ``A_rs = beta_r exp(G_r - G_s) k_r.k_s`` (s < r).
    One batched triangular solve gives ``(I + A)^-1`` for every chunk (cheaper on CPU than solving for the
    two right-hand sides directly), hence ``U = U0 - W S``, so the only sequential work is
    ``S_next = exp(G_C) S + (exp(G_C - G) K)^T U`` over T / chunk_size chunks; outputs are then
    ``O = (exp(G) Q) S + (Q K^T * decay) U`` for all chunks at once. Every exp() argument is <= 0 (upper
    triangles are masked to -inf before exp), so nothing overflows however strong the decay.
    The tail is padded with zeros (g=0, beta=0 leaves the state untouched) and sliced off.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = v.dtype
    seq_len = k.shape[1]
    q, k, v, g, beta, state = _to_head_first(q, k, v, g, beta, scale, initial_state, use_qk_l2norm_in_kernel)
    batch, heads, _, key_dim = k.shape
    value_dim = v.shape[-1]

    pad = (-seq_len) % chunk_size
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    num_chunks = (seq_len + pad) // chunk_size
    # One copy into chunk-major memory up front; otherwise every batched matmul below copies its operands.
    q, k, v = (x.reshape(batch, heads, num_chunks, chunk_size, x.shape[-1]).contiguous() for x in (q, k, v))
    g, beta = (x.reshape(batch, heads, num_chunks, chunk_size) for x in (g, beta))

    log_decay = g.cumsum(-1)  # G_r: decay from the chunk start through step r
    causal = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=k.device).tril()
    pair_log_decay = log_decay[..., :, None] - log_decay[..., None, :]  # G_r - G_s
    pair_decay = torch.exp(pair_log_decay.masked_fill(~causal, float("-inf")))  # 0 above the diagonal

    key_gram = (k @ k.transpose(-1, -2)) * pair_decay
    strictly_lower = (beta[..., None] * key_gram).tril(-1)
    identity = torch.eye(chunk_size, dtype=k.dtype, device=k.device)
    inverse = torch.linalg.solve_triangular(identity + strictly_lower, identity, upper=False, unitriangular=True)
    values_no_state = inverse @ (beta[..., None] * v)  # U0 [.., C, V]
    state_weights = inverse @ ((beta * torch.exp(log_decay))[..., None] * k)  # W [.., C, K]

    keys_to_chunk_end = k * torch.exp(log_decay[..., -1:] - log_decay)[..., None]
    chunk_decay = torch.exp(log_decay[..., -1])[..., None, None]  # [B, HV, N, 1, 1]
    # unbind, not [:, :, n]: each indexed slice would cost a full-size zero-filled gradient in backward.
    per_chunk = zip(
        values_no_state.unbind(2), state_weights.unbind(2), keys_to_chunk_end.transpose(-1, -2).unbind(2),
        chunk_decay.unbind(2),
    )
    start_states, updates = [], []
    for values_n, weights_n, keys_t_n, decay_n in per_chunk:
        start_states.append(state)
        update = values_n - weights_n @ state
        updates.append(update)
        state = decay_n * state + keys_t_n @ update
    start_states_all = torch.stack(start_states, dim=2)  # [B, HV, N, K, V]
    updates_all = torch.stack(updates, dim=2)  # [B, HV, N, C, V]

    query_key = (q @ k.transpose(-1, -2)) * pair_decay
    o = (q * torch.exp(log_decay)[..., None]) @ start_states_all + query_key @ updates_all
    o = o.reshape(batch, heads, num_chunks * chunk_size, value_dim)[:, :, :seq_len]
    return o.transpose(1, 2).to(out_dtype), (state if output_final_state else None)


def gdn_gates(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor, allow_neg_eigval: bool,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, beta) in `dtype` from the raw a_proj / b_proj outputs, as the layer's training call computes them."""
    beta = b.to(dtype).sigmoid()
    if allow_neg_eigval:
        beta = beta * 2.0
    g = -A_log.to(dtype).exp() * F.softplus(a.to(dtype) + dt_bias.to(dtype))
    return g, beta
