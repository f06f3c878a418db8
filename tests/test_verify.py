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
