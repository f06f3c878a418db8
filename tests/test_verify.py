"""`hybridlm verify` off the GPU: it refuses clearly, and its checks' machinery works on the torch kernels."""

from __future__ import annotations

import math

import pytest
import torch

from hybridlm import verify


def test_verify_without_cuda_exits_2_with_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert verify.run_verify() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: hybridlm verify needs a CUDA GPU") and "\n" not in err


def test_checks_fail_on_nan_and_above_threshold():
    assert verify.Check("x", 1e-3, 1e-2).ok
    assert not verify.Check("x", 2e-2, 1e-2).ok
    assert not verify.Check("x", math.nan, 1e-2).ok
    a = torch.tensor([1.0, 2.0, 2.0])
    assert verify.rel_error(a * 1.01, a) == pytest.approx(0.01)


def test_decoding_check_passes_on_cpu_with_torch_kernels():
    (check,) = verify.check_decoding(torch.device("cpu"), kernels="torch")
    assert check.ok and check.error < 1e-4 and "torch kernels" in check.name


def test_unknown_section_is_a_one_line_error(capsys):
    assert verify.run_verify(("fla_model", "speed")) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown verify section(s) speed" in err and "loss" in err and "\n" not in err


def test_op_check_compares_with_float64_and_the_torch_op():
    """The op rows' machinery on the CPU (torch kernels on both sides): each config yields a row against
    float64 ground truth, near bf16 rounding, and one against the PyTorch op, exactly 0 here."""
    import itertools

    checks = list(itertools.islice(verify.check_op(torch.device("cpu"), (torch.bfloat16,), backend="torch"), 4))
    assert [c.name.split(": ")[1].split(" (")[0] for c in checks] == ["torch vs float64", "torch vs torch"] * 2
    assert checks[0].name.startswith("op bfloat16 d=64 T=64: ") and checks[2].name.startswith("op bfloat16 d=64 T=64 h0: ")
    assert all(c.ok for c in checks)
    assert 1e-4 < checks[0].error < 1e-2 and checks[1].error == 0.0


def test_model_check_measures_autocast_against_float64():
    checks = verify.check_model_backends(torch.device("cpu"), backend="torch", seq_len=64)
    assert [c.name for c in checks] == ["hybrid model logits, torch kernels (bf16 autocast) vs float64",
                                        "hybrid model gradients, torch kernels (bf16 autocast) vs float64"]
    assert all(c.ok for c in checks) and all(0 < c.error for c in checks)


def test_op_check_cotangents_do_not_depend_on_output_strides(monkeypatch):
    """Session 3's GPU run reported FLA's dq 1.4 away from ours in every configuration: the old check drew
    its cotangents with `randn_like(o)`, which follows o's strides, and our op's o is a transposed view while
    FLA's is contiguous, so the two backends were differentiated along different directions. A stand-in for
    FLA that returns our op's result made contiguous must now agree with the torch op exactly."""
    import itertools
    import sys

    from hybridlm.ops import gdn_torch

    dispatch = sys.modules["hybridlm.ops.gated_delta_rule"]

    def contiguous_fla(*args, mode):
        o, state = gdn_torch.chunk_gated_delta_rule(*args)
        return o.contiguous(), state

    monkeypatch.setattr(dispatch, "fla_gated_delta_rule", contiguous_fla)
    monkeypatch.setattr(dispatch, "resolve_backend", lambda backend, device: backend)
    o, _ = gdn_torch.chunk_gated_delta_rule(*[torch.randn(1, 8, 2, 4)] * 3, -torch.rand(1, 8, 2), torch.rand(1, 8, 2))
    assert not o.is_contiguous()  # the situation the old check got wrong
    checks = list(itertools.islice(verify.check_op(torch.device("cpu"), (torch.float32,), backend="fla"), 4))
    assert [c.name.split(": ")[1].split(" (")[0] for c in checks] == ["fla vs float64", "fla vs torch"] * 2
    assert all(c.ok for c in checks) and checks[1].error < 1e-6 and checks[3].error < 1e-6
