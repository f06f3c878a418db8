"""Which side of a failing `verify --sections op_*` row is wrong? Every gradient of FLA's chunk kernel
against float64 ground truth on the GPU, for the two ways hybridlm calls it:

A. the op as `gated_delta_rule(backend="fla")` calls it (gates given, state layout [K, V]), with the
   state layout flag both ways (a transposed state in and out for `state_v_first=True`), and our
   PyTorch chunked op for comparison; ground truth: the naive float64 recurrence.
B. the training call (`fla_chunk_with_raw_gates`: raw gates, L2 norm and sigmoid in the kernel) at the
   H100 presets' geometry; ground truth: the same maths in float64 with our chunked op.

Run on the device with FLA importable: `python bench/gpu_grad_probe.py`. Prints one table per probe.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hybridlm.ops import gdn_torch
from hybridlm.verify import rel_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the CPU only dry-runs the script with fakes


def _leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _grads(outputs, cotangents, leaves):
    torch.autograd.backward(outputs, cotangents)
    return [o.detach() for o in outputs] + [x.grad for x in leaves]


def probe_op(dtype: torch.dtype, b=2, t=256, h=4, d=64) -> None:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    gen = torch.Generator(device=DEVICE).manual_seed(0)
    rand = lambda *s: torch.randn(*s, generator=gen, device=DEVICE, dtype=torch.float64)  # noqa: E731
    q, k, v = rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h, d)
    g = -F.softplus(rand(b, t, h)) * 0.5
    beta = torch.sigmoid(rand(b, t, h))
    h0 = rand(b, h, d, d) * 0.1
    # rounded to the tested outputs' dtypes first, so the float64 truth sees the very same cotangents
    do, dstate = rand(b, t, h, d).to(dtype).double(), rand(b, h, d, d).float().double()
    names = ["o", "state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]

    ref_leaves = _leaves([q, k, v, g, beta, h0])
    o, s = gdn_torch.naive_gated_delta_rule(*ref_leaves[:5], None, ref_leaves[5], True, True)
    truth = _grads([o, s], [do, dstate], ref_leaves)

    def cast(x, i):  # q, k, v, beta in the probe dtype; g and h0 in float32 (as the model passes them)
        return x.to(dtype) if i in (0, 1, 2, 4) else x.float()

    rows = {}
    for label, v_first in (("fla state_v_first=False", False), ("fla state_v_first=True", True)):
        leaves = _leaves([cast(x, i) for i, x in enumerate([q, k, v, g, beta, h0])])
        state_in = leaves[5].transpose(-1, -2) if v_first else leaves[5]
        o, s = chunk_gated_delta_rule(q=leaves[0], k=leaves[1], v=leaves[2], g=leaves[3], beta=leaves[4],
                                      initial_state=state_in, output_final_state=True,
                                      use_qk_l2norm_in_kernel=True, state_v_first=v_first)
        s = s.transpose(-1, -2) if v_first else s
        rows[label] = _grads([o, s], [do.to(o.dtype), dstate.to(s.dtype)], leaves)
    leaves = _leaves([cast(x, i) for i, x in enumerate([q, k, v, g, beta, h0])])
    o, s = gdn_torch.chunk_gated_delta_rule(*leaves[:5], None, leaves[5], True, True)
    rows["torch chunk"] = _grads([o, s], [do.to(o.dtype), dstate.to(s.dtype)], leaves)
    _print(f"A. op, {str(dtype)[6:]}, B={b} T={t} H={h} d={d}, vs naive float64", names, rows, truth)


def probe_training_call(b=1, t=1024, h=12, d=256) -> None:
    from hybridlm.ops.gdn_fla import fla_chunk_with_raw_gates

    gen = torch.Generator(device=DEVICE).manual_seed(1)
    rand = lambda *s: torch.randn(*s, generator=gen, device=DEVICE, dtype=torch.float64)  # noqa: E731
    q, k, v = rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h, d)
    a, bb = rand(b, t, h), rand(b, t, h)
    A_log = torch.empty(h, device=DEVICE, dtype=torch.float64).uniform_(0, 16, generator=gen).log()
    dt_bias = rand(h) * 0.5
    do = rand(b, t, h, d).to(torch.bfloat16).double()  # the bf16 output's cotangent, exactly
    names = ["o", "dq", "dk", "dv", "da", "db", "dA_log", "ddt_bias"]

    ref = _leaves([q, k, v, a, bb, A_log, dt_bias])
    gate = -ref[5].exp() * F.softplus(ref[3] + ref[6])
    o, _ = gdn_torch.chunk_gated_delta_rule(ref[0], ref[1], ref[2], gate, ref[4].sigmoid(), None, None, False, True)
    truth = _grads([o], [do], ref)

    leaves = _leaves([x.to(torch.bfloat16) if i < 5 else x.float() for i, x in enumerate([q, k, v, a, bb, A_log, dt_bias])])
    o = fla_chunk_with_raw_gates(*leaves, allow_neg_eigval=False)
    rows = {"fla raw gates (training call), bf16": _grads([o], [do.to(o.dtype)], leaves)}
    _print(f"B. training call, bf16, B={b} T={t} H={h} d={d}, vs float64", names, rows, truth)


def _print(title, names, rows, truth) -> None:
    print(f"\n{title}\n| path | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{rel_error(x, y):.2e}" for x, y in zip(values, truth)) + " |", flush=True)


if __name__ == "__main__":
    probe_training_call()
    probe_op(torch.bfloat16)
