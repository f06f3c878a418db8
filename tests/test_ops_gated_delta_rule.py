"""Gated delta rule op: the three torch paths agree, gradients are right, dispatch fails loudly."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hybridlm.errors import BackendError
from hybridlm.ops import available_backends, gated_delta_rule
from hybridlm.ops.gdn_torch import (
    chunk_gated_delta_rule,
    naive_gated_delta_rule,
    recurrent_gated_delta_rule,
)


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def make_inputs(
    B: int, T: int, H: int, HV: int, K: int, V: int,
    dtype: torch.dtype = torch.float64, with_state: bool = False, normalise_qk: bool = True, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Well-conditioned random inputs: unit (or small) q/k, g = -softplus(.) < 0, beta in (0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    q, k = rand(B, T, H, K), rand(B, T, H, K)
    if normalise_qk:
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    else:
        q, k = 0.3 * q / K**0.5, 0.3 * k / K**0.5
    inputs = {
        "q": q,
        "k": k,
        "v": rand(B, T, HV, V),
        "g": -F.softplus(rand(B, T, HV) - 1.0),
        "beta": torch.sigmoid(rand(B, T, HV)),
    }
    if with_state:
        inputs["initial_state"] = rand(B, HV, K, V)
    return {name: t.to(dtype) for name, t in inputs.items()}


SHAPES = [  # (B, T, H, HV, K, V)
    (1, 1, 1, 1, 8, 8),
    (2, 63, 2, 2, 16, 8),
    (1, 64, 1, 1, 8, 16),
    (2, 65, 2, 4, 16, 12),
    (1, 200, 2, 4, 8, 8),
    (2, 130, 1, 2, 12, 20),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}HV{}K{}V{}".format(*s))
@pytest.mark.parametrize("with_state", [False, True], ids=["no_h0", "h0"])
def test_chunk_recurrent_and_naive_agree_in_float64(shape: tuple[int, ...], with_state: bool) -> None:
    inputs = make_inputs(*shape, with_state=with_state, normalise_qk=shape[1] % 2 == 0)
    ref_o, ref_state = naive_gated_delta_rule(**inputs, output_final_state=True)
    assert ref_o.shape == (shape[0], shape[1], shape[3], shape[5])
    assert ref_state.shape == (shape[0], shape[3], shape[4], shape[5])
    assert ref_o.abs().max() > 1e-3  # not trivially zero
    for impl in (chunk_gated_delta_rule, recurrent_gated_delta_rule):
        o, state = impl(**inputs, output_final_state=True)
        assert o.dtype == torch.float64 and state.dtype == torch.float64
        assert (o - ref_o).abs().max().item() <= 1e-10, impl.__name__
        assert (state - ref_state).abs().max().item() <= 1e-10, impl.__name__


def test_grouped_value_heads_read_query_key_head_j_over_group() -> None:
    """GVA mapping checked head by head against single-head runs (independent of the shared expansion)."""
    B, T, H, HV = 2, 20, 2, 6
    inputs = make_inputs(B, T, H, HV, 8, 4, with_state=True)
    o, state = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=8)
    for j in range(HV):
        i = j // (HV // H)
        head = {
            "q": inputs["q"][:, :, i : i + 1], "k": inputs["k"][:, :, i : i + 1],
            "v": inputs["v"][:, :, j : j + 1], "g": inputs["g"][:, :, j : j + 1],
            "beta": inputs["beta"][:, :, j : j + 1], "initial_state": inputs["initial_state"][:, j : j + 1],
        }
        o_j, state_j = naive_gated_delta_rule(**head, output_final_state=True)
        assert (o[:, :, j : j + 1] - o_j).abs().max().item() <= 1e-10
        assert (state[:, j : j + 1] - state_j).abs().max().item() <= 1e-10


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_matches_fla_reference_semantics() -> None:
    """Anchor the contract to FLA 0.6.0's own (CPU-runnable) reference, which computes in float32."""
    fla_naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")
    inputs = make_inputs(2, 70, 3, 3, 16, 8, with_state=True)
    ref_o, ref_state = fla_naive.naive_recurrent_gated_delta_rule(
        q=inputs["q"], k=inputs["k"], v=inputs["v"], beta=inputs["beta"], g=inputs["g"], scale=0.3,
        initial_state=inputs["initial_state"], output_final_state=True,
    )
    o, state = gated_delta_rule(**inputs, scale=0.3, mode="chunk", output_final_state=True)
    assert o.shape == ref_o.shape and state.shape == ref_state.shape
    assert (o - ref_o.double()).abs().max().item() <= 1e-5
    assert (state - ref_state.double()).abs().max().item() <= 1e-5


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_public_op_matches_naive_and_returns_state_only_on_request(mode: str) -> None:
    inputs = make_inputs(2, 70, 2, 4, 8, 8, with_state=True)
    ref_o, ref_state = naive_gated_delta_rule(**inputs, output_final_state=True)
    o, state = gated_delta_rule(**inputs, mode=mode, backend="torch", output_final_state=True)
    assert (o - ref_o).abs().max().item() <= 1e-10
    assert (state - ref_state).abs().max().item() <= 1e-10
    _, no_state = gated_delta_rule(**inputs, mode=mode)
    assert no_state is None


def test_state_carries_across_split_sequences() -> None:
    """Running T=100 in one go equals running 37 then 63 steps from the returned state (decoding use)."""
    inputs = make_inputs(1, 100, 2, 2, 8, 8)
    full_o, full_state = gated_delta_rule(**inputs, mode="chunk", output_final_state=True)
    first = {name: t[:, :37] for name, t in inputs.items()}
    second = {name: t[:, 37:] for name, t in inputs.items()}
    o1, state1 = gated_delta_rule(**first, mode="chunk", output_final_state=True)
    o2, state2 = gated_delta_rule(**second, initial_state=state1, mode="recurrent", output_final_state=True)
    assert (torch.cat([o1, o2], dim=1) - full_o).abs().max().item() <= 1e-10
    assert (state2 - full_state).abs().max().item() <= 1e-10


def test_chunk_size_does_not_change_results() -> None:
    inputs = make_inputs(1, 50, 1, 2, 8, 4, with_state=True)
    ref_o, ref_state = chunk_gated_delta_rule(**inputs, output_final_state=True)
    for chunk_size in (1, 7, 16, 50, 128):
        o, state = chunk_gated_delta_rule(**inputs, output_final_state=True, chunk_size=chunk_size)
        assert (o - ref_o).abs().max().item() <= 1e-10
        assert (state - ref_state).abs().max().item() <= 1e-10


@pytest.mark.parametrize("mode", ["chunk", "recurrent"])
def test_qk_l2norm_in_kernel_equals_normalising_first(mode: str) -> None:
    inputs = make_inputs(2, 40, 2, 4, 8, 8, normalise_qk=False, with_state=True)
    in_kernel, _ = gated_delta_rule(**inputs, mode=mode, use_qk_l2norm_in_kernel=True)
    normalised = dict(inputs)
    for name in ("q", "k"):
        x = inputs[name]
        normalised[name] = x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)  # FLA's l2norm eps
    outside, _ = gated_delta_rule(**normalised, mode=mode)
    unnormalised, _ = gated_delta_rule(**inputs, mode=mode)
    assert (in_kernel - outside).abs().max().item() <= 1e-12
    assert (in_kernel - unnormalised).abs().max().item() > 1e-3  # the flag really does something


def test_scale_is_applied_to_queries() -> None:
    inputs = make_inputs(1, 20, 1, 1, 16, 8)
    default_o, _ = gated_delta_rule(**inputs, mode="chunk")
    explicit_o, _ = gated_delta_rule(**inputs, mode="chunk", scale=16**-0.5)
    doubled_o, _ = gated_delta_rule(**inputs, mode="chunk", scale=2 * 16**-0.5)
    assert (default_o - explicit_o).abs().max().item() <= 1e-12
    assert (doubled_o - 2 * default_o).abs().max().item() <= 1e-12


def _gradcheck(impl, T: int, fast_mode: bool = False, **kwargs) -> None:
    inputs = make_inputs(1, T, 1, 2, 3, 2, with_state=True, seed=T)
    names = list(inputs)
    leaves = [inputs[name].clone().requires_grad_(True) for name in names]

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return impl(**dict(zip(names, tensors)), output_final_state=True, **kwargs)

    assert torch.autograd.gradcheck(run, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=fast_mode)


@pytest.mark.parametrize("T", [5, 11])
def test_chunk_gradcheck(T: int) -> None:
    """chunk_size=4 keeps it tiny while crossing chunk boundaries and padding the last chunk."""
    _gradcheck(chunk_gated_delta_rule, T, chunk_size=4)


def test_chunk_gradcheck_default_chunk_size_crosses_boundary() -> None:
    """fast_mode checks random directional derivatives: the full Jacobian at T=70 costs ~1000 forwards."""
    _gradcheck(chunk_gated_delta_rule, 70, fast_mode=True)


def test_recurrent_gradcheck() -> None:
    _gradcheck(recurrent_gated_delta_rule, 5)


def test_chunk_and_recurrent_gradients_agree_with_l2norm() -> None:
    inputs = make_inputs(1, 33, 2, 4, 8, 8, normalise_qk=False, with_state=True)
    grads = []
    for mode in ("chunk", "recurrent"):
        leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
        o, state = gated_delta_rule(**leaves, mode=mode, output_final_state=True, use_qk_l2norm_in_kernel=True)
        (o.square().sum() + state.sum()).backward()
        grads.append({name: t.grad for name, t in leaves.items()})
    for name in inputs:
        assert grads[0][name].abs().max() > 0, name
        assert (grads[0][name] - grads[1][name]).abs().max().item() <= 1e-9, name


def test_float32_chunk_matches_float64_reference_at_long_context() -> None:
    inputs64 = make_inputs(1, 1024, 2, 2, 64, 64, with_state=True)
    ref_o, ref_state = naive_gated_delta_rule(**inputs64, output_final_state=True)
    inputs32 = {name: t.float() for name, t in inputs64.items()}
    o, state = gated_delta_rule(**inputs32, mode="chunk", output_final_state=True)
    assert o.dtype == torch.float32 and state.dtype == torch.float32
    assert ((o.double() - ref_o).norm() / ref_o.norm()).item() < 1e-5
    assert ((state.double() - ref_state).norm() / ref_state.norm()).item() < 1e-5


def test_half_precision_inputs_accumulate_in_float32() -> None:
    inputs = make_inputs(1, 80, 1, 1, 16, 16, dtype=torch.bfloat16)
    o, state = gated_delta_rule(**inputs, mode="chunk", output_final_state=True)
    assert o.dtype == torch.bfloat16 and state.dtype == torch.float32
    ref_o, _ = naive_gated_delta_rule(**{name: t.double() for name, t in inputs.items()})
    assert ((o.double() - ref_o).norm() / ref_o.norm()).item() < 1e-2


def test_strong_decay_does_not_overflow() -> None:
    inputs = make_inputs(1, 130, 1, 1, 8, 8)
    inputs["g"] = torch.full_like(inputs["g"], -80.0)  # cumulative log decay of -5000 within a chunk
    leaves = {name: t.clone().requires_grad_(True) for name, t in inputs.items()}
    o, _ = gated_delta_rule(**leaves, mode="chunk")
    o.sum().backward()
    ref_o, _ = naive_gated_delta_rule(**inputs)
    assert torch.isfinite(o).all() and all(torch.isfinite(t.grad).all() for t in leaves.values())
    assert (o - ref_o).abs().max().item() <= 1e-10


def test_auto_mode_picks_recurrent_for_short_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    # importlib, not `import ... as`: the package attribute `gated_delta_rule` is the function, not the module.
    op_module = importlib.import_module("hybridlm.ops.gated_delta_rule")

    called = []
    for name in ("chunk_gated_delta_rule", "recurrent_gated_delta_rule"):
        original = getattr(op_module.gdn_torch, name)
        monkeypatch.setattr(
            op_module.gdn_torch, name, lambda *a, _n=name, _f=original, **kw: called.append(_n) or _f(*a, **kw)
        )
    gated_delta_rule(**make_inputs(1, 16, 1, 1, 4, 4))
    gated_delta_rule(**make_inputs(1, 17, 1, 1, 4, 4))
    assert called == ["recurrent_gated_delta_rule", "chunk_gated_delta_rule"]


def test_fla_backend_on_cpu_raises_helpful_backend_error() -> None:
    with pytest.raises(BackendError, match="CUDA"):
        gated_delta_rule(**make_inputs(1, 4, 1, 1, 4, 4), backend="fla")


def test_auto_backend_on_cpu_uses_torch() -> None:
    inputs = make_inputs(1, 20, 1, 1, 4, 4)
    o, _ = gated_delta_rule(**inputs, backend="auto")
    ref_o, _ = naive_gated_delta_rule(**inputs)
    assert (o - ref_o).abs().max().item() <= 1e-10
    backends = available_backends("cpu")
    assert backends["torch"][0] is True
    assert backends["fla"][0] is False and "CUDA" in backends["fla"][1]


def test_cpu_paths_never_import_fla() -> None:
    """Importing fla is slow and drags in Triton; a fresh interpreter proves CPU runs never pay for it."""
    code = (
        "import sys, torch\n"
        "from hybridlm.ops import available_backends, gated_delta_rule\n"
        "x = torch.randn(1, 3, 1, 4)\n"
        "gated_delta_rule(x, x, x, -torch.ones(1, 3, 1), torch.ones(1, 3, 1), backend='auto')\n"
        "available_backends(); available_backends('cpu')\n"
        "print('fla' in sys.modules)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        (lambda x: x.update(v=x["v"][:, :-1]), "v"),  # mismatched T
        (lambda x: x.update(k=x["k"][:, :-1]), "k"),
        (lambda x: x.update(v=torch.zeros(1, 8, 3, 4, dtype=torch.float64)), "v"),  # HV=3 not a multiple of H=2
        (lambda x: x.update(g=x["g"][..., :1]), "g"),
        (lambda x: x.update(beta=x["beta"][:, :, :, None]), "beta"),
        (lambda x: x.update(initial_state=torch.zeros(1, 4, 4, 5, dtype=torch.float64)), "initial_state"),
        (lambda x: x.update(q=x["q"][0]), "q"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_argument(change, argument: str) -> None:
    inputs = make_inputs(1, 8, 2, 4, 4, 4)
    change(inputs)
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        gated_delta_rule(**inputs)


@pytest.mark.parametrize(("kwargs", "word"), [({"backend": "triton"}, "backend"), ({"mode": "fast"}, "mode")])
def test_unknown_backend_or_mode_raises_value_error(kwargs: dict[str, str], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        gated_delta_rule(**make_inputs(1, 4, 1, 1, 4, 4), **kwargs)
