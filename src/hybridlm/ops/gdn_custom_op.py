"""The GDN layer's training call as a torch.library custom op, so torch.compile traces through it.

FLA's chunk kernel is launched by Python code that Dynamo cannot trace (FLA marks its entry point
`torch.compiler.disable`), so a compiled block that calls it breaks into several graphs and Inductor
cannot fuse across it. As a custom op with a fake (shape-only) implementation and a registered
backward it is one opaque node: Dynamo traces the whole block (`fullgraph=True`) and Inductor
compiles everything around it.

    hybridlm::gdn_chunk(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval) -> o
    hybridlm::gdn_chunk_backward(do, q, k, v, a, b, A_log, dt_bias, allow_neg_eigval)
        -> (dq, dk, dv, da, db, dA_log, ddt_bias)

Semantics are `gated_delta_rule_with_gates`: beta = sigmoid(b) (x2 with allow_neg_eigval),
g = -exp(A_log) * softplus(a + dt_bias), q and k L2-normalised, no state in or out. On CUDA both ops
run FLA's own forward and backward passes (the functions its autograd.Function calls, so the
TileLang dispatch on Hopper is kept); on the CPU they run the pure-PyTorch reference, which is what
lets `torch.library.opcheck` and the compile tests run in CI. Only the inputs are saved: the backward
recomputes the q/k norms, the gates and FLA's intra-chunk matrix (one small kernel of the forward's
five), which keeps 75 MB per layer at 48 x 1024 out of the saved activations.
"""

from __future__ import annotations

import torch

from hybridlm.ops.gdn_torch import chunk_gated_delta_rule as torch_chunk_gated_delta_rule
from hybridlm.ops.gdn_torch import gdn_gates

Tensor = torch.Tensor


def _torch_forward(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval) -> Tensor:
    g, beta = gdn_gates(a, b, A_log, dt_bias, allow_neg_eigval, torch.promote_types(q.dtype, torch.float32))
    o, _ = torch_chunk_gated_delta_rule(q, k, v, g, beta, None, None, False, True)
    return o


@torch.library.custom_op("hybridlm::gdn_chunk", mutates_args=())
def gdn_chunk(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor,
              allow_neg_eigval: bool) -> Tensor:
    """The CPU (and any non-CUDA device) kernel: the pure-PyTorch reference (contiguous, as FLA's is)."""
    return _torch_forward(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval).contiguous()


@gdn_chunk.register_kernel("cuda")
def _gdn_chunk_cuda(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval):
    from fla.modules.norm.l2norm import l2norm_fwd
    from fla.ops.common.gate import fused_beta_sigmoid_fwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_fwd

    with torch.cuda.device(q.device):
        q, k, v, a, b = (t.contiguous() for t in (q, k, v, a, b))
        qn, _ = l2norm_fwd(q)
        kn, _ = l2norm_fwd(k)
        beta = fused_beta_sigmoid_fwd(b, 2.0 if allow_neg_eigval else 1.0)
        _, o, _, _, _, _ = chunk_gated_delta_rule_fwd(
            q=qn, k=kn, v=v, g=a, beta=beta, scale=q.shape[-1] ** -0.5, initial_state=None,
            output_final_state=False, state_v_first=True, use_gate_in_kernel=True, A_log=A_log,
            dt_bias=dt_bias)
    return o.to(q.dtype)


@gdn_chunk.register_fake
def _gdn_chunk_fake(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval):
    return v.new_empty(v.shape, dtype=q.dtype)


@torch.library.custom_op("hybridlm::gdn_chunk_backward", mutates_args=())
def gdn_chunk_backward(do: Tensor, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, A_log: Tensor,
                       dt_bias: Tensor, allow_neg_eigval: bool
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The CPU kernel: the reference forward again, differentiated by `torch.func.vjp` (which, unlike
    `torch.autograd.grad`, still works here, beneath the dispatcher's autograd layer)."""
    inputs = (q, k, v, a, b, A_log, dt_bias)
    _, vjp = torch.func.vjp(lambda *x: _torch_forward(*x, allow_neg_eigval), *inputs)
    return tuple(grad.to(t.dtype).contiguous() for grad, t in zip(vjp(do), inputs))


@gdn_chunk_backward.register_kernel("cuda")
def _gdn_chunk_backward_cuda(do, q, k, v, a, b, A_log, dt_bias, allow_neg_eigval):
    from fla.modules.norm.l2norm import l2norm_bwd, l2norm_fwd
    from fla.ops.common.gate import fused_beta_sigmoid_bwd, fused_beta_sigmoid_fwd
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd
    from fla.ops.gated_delta_rule.chunk_fwd import chunk_gated_delta_rule_fwd_intra
    from fla.ops.gated_delta_rule.gate import gdn_gate_chunk_cumsum
    from fla.ops.utils.constant import RCP_LN2

    neg_scale = 2.0 if allow_neg_eigval else 1.0
    with torch.cuda.device(q.device):
        do, q, k, v, a, b = (t.contiguous() for t in (do, q, k, v, a, b))
        qn, q_rstd = l2norm_fwd(q)
        kn, k_rstd = l2norm_fwd(k)
        beta = fused_beta_sigmoid_fwd(b, neg_scale)
        g = gdn_gate_chunk_cumsum(g=a, A_log=A_log, chunk_size=64, scale=RCP_LN2, dt_bias=dt_bias)
        _, _, A = chunk_gated_delta_rule_fwd_intra(k=kn, v=v, g=g, beta=beta, chunk_size=64)
        dq, dk, dv, db, da, _, dA_log, ddt_bias = chunk_gated_delta_rule_bwd(
            q=qn, k=kn, v=v, g=g, beta=beta, A=A, scale=q.shape[-1] ** -0.5, initial_state=None, do=do,
            dht=None, state_v_first=True, use_gate_in_kernel=True, g_input=a, A_log=A_log, dt_bias=dt_bias)
        dq = l2norm_bwd(qn, q_rstd, dq)
        dk = l2norm_bwd(kn, k_rstd, dk)
        db = fused_beta_sigmoid_bwd(b, db, scale=neg_scale)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), da.to(a.dtype), db.to(b.dtype), dA_log, ddt_bias


@gdn_chunk_backward.register_fake
def _gdn_chunk_backward_fake(do, q, k, v, a, b, A_log, dt_bias, allow_neg_eigval):
    return tuple(t.new_empty(t.shape) for t in (q, k, v, a, b, A_log, dt_bias))  # contiguous, as FLA's


def _setup_context(ctx, inputs, output) -> None:
    *tensors, ctx.allow_neg_eigval = inputs
    ctx.save_for_backward(*tensors)


def _backward(ctx, do):
    grads = gdn_chunk_backward(do, *ctx.saved_tensors, ctx.allow_neg_eigval)
    return (*grads, None)


gdn_chunk.register_autograd(_backward, setup_context=_setup_context)
