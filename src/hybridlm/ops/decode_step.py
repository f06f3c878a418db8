"""One decoding step of the GDN layer's two stateful ops, with the state updated in place.

A decode step that a CUDA graph replays must read and write its state at fixed addresses, and it should
touch each state once: at batch 32 the GDN states of `h100_hybrid_sparse` are 1 GB, more bytes per step
than the weights. Both flavours of each op compute the same function (FLA's semantics):

- `gdn_step(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval, state) -> o`: the gated delta rule for one
  token from the layer's raw gate projections (`g = -exp(A_log) softplus(a + dt_bias)`, `beta = sigmoid(b)`,
  x2 with `allow_neg_eigval`), q and k L2-normalised inside. q, k `[B, 1, H, K]`, v `[B, 1, HV, V]`, a, b
  `[B, 1, HV]`; `state` `[B, HV, K, V]` (float32, float64 in tests) is overwritten with the new state;
  o is `[B, 1, HV, V]` in v's dtype.
- `short_conv_step(x, weight, conv_state) -> y`: silu(causal depthwise conv) of one token x `[B, D]`
  continuing after the last K inputs `conv_state` `[B, D, K]` (oldest first, the layout of FLA's
  `causal_conv1d_update`), which is shifted by one with x appended; weight `[D, 1, K]`; y `[B, D]`.

PyTorch: the gates as the layer computes them and the op's recurrent step, then one copy into the state.
FLA (CUDA): its fused recurrent kernel with the gates fused in, reading its initial state from `state` and
storing its final state into the same tensor (each program loads and stores only its own [K, BV] tile, so
in place is safe; the public wrapper would allocate a new state, and copying it back would double the
state's traffic), and its conv update kernel, which shifts the conv state in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridlm.ops.gdn_torch import gdn_gates, recurrent_gated_delta_rule


def torch_gdn_step(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval: bool, state: torch.Tensor) -> torch.Tensor:
    g, beta = gdn_gates(a, b, A_log, dt_bias, allow_neg_eigval, state.dtype)
    o, new_state = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=state, output_final_state=True,
                                              use_qk_l2norm_in_kernel=True)
    state.copy_(new_state)
    return o


def fla_gdn_step(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval: bool, state: torch.Tensor) -> torch.Tensor:
    """FLA 0.6.0's `fused_recurrent_gated_delta_rule_fwd_kernel` launched as its wrapper launches it, with
    h0 = ht = state (FLA's version is pinned by `ops/fla_compat.py`)."""
    import triton
    from fla.ops.gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule_fwd_kernel as kernel

    batch, steps, heads, key_dim = k.shape
    value_heads, value_dim = v.shape[2], v.shape[3]
    q, k, v, a, b = (t.contiguous() for t in (q, k, v, a, b))  # the kernel indexes dense [B, T, heads, dim]
    o = torch.empty_like(v)
    block_k = triton.next_power_of_2(key_dim)
    block_v = min(8, triton.next_power_of_2(value_dim))
    grid = (triton.cdiv(value_dim, block_v) * batch * value_heads,)
    kernel[grid](q=q, k=k, v=v, g=a, gk=None, gv=None, beta=b, A_log=A_log, dt_bias=dt_bias, o=o, h0=state,
                 ht=state, cu_seqlens=None, scale=key_dim ** -0.5, T=steps, H=heads, HV=value_heads, K=key_dim,
                 V=value_dim, BK=block_k, BV=block_v, IS_BETA_HEADWISE=True, USE_QK_L2NORM_IN_KERNEL=True,
                 APPLY_BETA_SIGMOID=True, ALLOW_NEG_EIGVAL=allow_neg_eigval, STATE_V_FIRST=False, num_warps=1,
                 num_stages=3)
    return o


def torch_short_conv_step(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
    """The multiply-adds of `torch_short_conv` (kernels.py) in its order: a step computes the sums a
    whole-sequence convolution computes."""
    k = weight.shape[-1]
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x[:, :, None].to(conv_state.dtype)], dim=-1))
    acc = torch.promote_types(x.dtype, torch.float32)
    w = weight.to(acc).squeeze(1)  # [D, K]
    window = conv_state.to(acc)
    y = window[:, :, k - 1] * w[:, k - 1]
    for j in range(k - 1):
        y = y + window[:, :, j] * w[:, j]
    return F.silu(y).to(x.dtype)


def fla_short_conv_step(x: torch.Tensor, weight: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
    from fla.modules.causal_conv1d import causal_conv1d_update

    y, _ = causal_conv1d_update(x=x, cache=conv_state, weight=weight.to(x.dtype).squeeze(1), activation="silu")
    return y
