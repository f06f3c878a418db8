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
from hybridlm.verify import leaves_of, outputs_and_grads, rel_error

# on a CPU the script only runs when FLA's functions are replaced by stand-ins (how it was checked here)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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

    inputs, cotangents = [q, k, v, g, beta, h0], [do, dstate]
    truth = outputs_and_grads(lambda x: list(gdn_torch.naive_gated_delta_rule(*x[:5], None, x[5], True, True)),
                              leaves_of(inputs), cotangents)
    # q, k, v, beta in the probe dtype; g and h0 in float32 (as the model passes them)
    tested = [x.to(dtype) if i in (0, 1, 2, 4) else x.float() for i, x in enumerate(inputs)]

    def fla(x, v_first):
        o, s = chunk_gated_delta_rule(q=x[0], k=x[1], v=x[2], g=x[3], beta=x[4],
                                      initial_state=x[5].transpose(-1, -2) if v_first else x[5],
                                      output_final_state=True, use_qk_l2norm_in_kernel=True, state_v_first=v_first)
        return [o, s.transpose(-1, -2) if v_first else s]

    rows = {f"fla state_v_first={v_first}": outputs_and_grads(lambda x, v_first=v_first: fla(x, v_first),
                                                               leaves_of(tested), cotangents)
            for v_first in (False, True)}
    rows["torch chunk"] = outputs_and_grads(
        lambda x: list(gdn_torch.chunk_gated_delta_rule(*x[:5], None, x[5], True, True)), leaves_of(tested), cotangents)
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

    inputs = [q, k, v, a, bb, A_log, dt_bias]

    def reference(x):  # the kernel's in-kernel gate, sigmoid and L2 norm, written out
        gate = -x[5].exp() * F.softplus(x[3] + x[6])
        return [gdn_torch.chunk_gated_delta_rule(x[0], x[1], x[2], gate, x[4].sigmoid(), None, None, False, True)[0]]

    truth = outputs_and_grads(reference, leaves_of(inputs), [do])
    tested = [x.to(torch.bfloat16) if i < 5 else x.float() for i, x in enumerate(inputs)]
    rows = {"fla raw gates (training call), bf16": outputs_and_grads(
        lambda x: [fla_chunk_with_raw_gates(*x, allow_neg_eigval=False)], leaves_of(tested), [do])}
    _print(f"B. training call, bf16, B={b} T={t} H={h} d={d}, vs float64", names, rows, truth)


def _print(title, names, rows, truth) -> None:
    print(f"\n{title}\n| path | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, values in rows.items():
        print(f"| {label} | " + " | ".join(f"{rel_error(x, y):.2e}" for x, y in zip(values, truth)) + " |", flush=True)


if __name__ == "__main__":
    probe_training_call()
    probe_op(torch.bfloat16)
