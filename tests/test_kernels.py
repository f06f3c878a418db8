"""The kernel record: chosen once per device, handed to every module, never re-decided in forward;
the per-block compile seam and its "auto" policy; what a run records about its kernels."""

import copy
import json

import pytest
import torch

from hybridlm.config import preset, resolve
from hybridlm.errors import BackendError
from hybridlm.model import HybridLM
from hybridlm.model import fused, kernels
from hybridlm.model.kernels import TORCH_KERNELS, resolve_kernels
from hybridlm.ops import gdn_fla
from hybridlm.train.setup import compile_blocks, compiled_layer_types


def modules_with_kernels(model):
    return [m for m in model.modules() if isinstance(getattr(type(m), "kernels", None), kernels.Kernels)]


def test_cpu_gets_the_torch_record_and_every_module_shares_it():
    model = HybridLM(preset("tiny").model)
    assert model.kernels.backend == "torch" and set(model.kernels.describe()) >= {"gdn", "rms_norm", "reason"}
    users = modules_with_kernels(model)
    assert len(users) >= 8 and all(m.kernels is model.kernels for m in users)


def test_fla_requested_where_it_cannot_run():
    with pytest.raises(BackendError, match="model.kernels = 'fla' cannot run"):
        resolve_kernels("fla", "cpu")
    model = HybridLM(resolve(preset="tiny", values={"model.kernels": "fla"}).model)  # built on the CPU first
    assert set(model.kernels.names.values()) == {"unavailable"}
    with pytest.raises(BackendError, match="cannot run"):
        model(torch.randint(0, 100, (1, 8)))


def test_forward_never_asks_which_backend(monkeypatch):
    model = HybridLM(preset("tiny").model)

    def asked(*args, **kwargs):
        raise AssertionError("forward re-decided its kernels")

    monkeypatch.setattr(gdn_fla, "fla_usable", asked)
    monkeypatch.setattr(kernels, "resolve_kernels", asked)
    ids = torch.randint(0, 100, (2, 24))
    model(ids, labels=ids).loss.backward()


def fake_fla(monkeypatch):
    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (True, "faked for the test"))
    monkeypatch.setattr(fused, "load", lambda: {"linear_cross_entropy": object()})
    kernels._fla_kernels.cache_clear()


def test_auto_with_fla_and_the_compile_flavour(monkeypatch):
    fake_fla(monkeypatch)
    eager = resolve_kernels("auto", "cuda")
    assert set(eager.names.values()) == {"fla"} and eager.rms_norm is fused.rms_norm
    compiled = resolve_kernels("auto", "cuda", for_compile=True)
    # only the GDN chunk kernel and the loss stay FLA's; Inductor fuses the norms, SwiGLU and conv itself
    assert compiled.names["gdn"] == "fla" and compiled.names["linear_cross_entropy"] == "fla"
    assert {compiled.names[k] for k in ("rms_norm", "gated_rms_norm", "swiglu", "short_conv")} == {"torch"}
    kernels._fla_kernels.cache_clear()


def test_auto_on_cuda_without_fla_warns_and_runs_torch(monkeypatch):
    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (False, "FLA 0.6.0 refuses ... install tilelang"))
    kernels._warn_fallback_once.cache_clear()
    with pytest.warns(UserWarning, match="install tilelang"):
        record = resolve_kernels("auto", "cuda")
    assert record.backend == "torch" and "tilelang" in record.reason


def test_moving_the_model_rechooses_its_kernels(monkeypatch):
    model = HybridLM(preset("tiny").model)
    seen = []
    original = kernels.resolve_kernels

    def spy(choice, device, **kw):
        seen.append(torch.device(device).type)
        return original(choice, device, **kw)

    import hybridlm.model.lm as lm

    monkeypatch.setattr(lm, "resolve_kernels", spy)
    model.to(torch.float64)  # same device: nothing to choose
    assert seen == []
    model.to("meta")
    assert seen == ["meta"] and all(m.kernels is model.kernels for m in modules_with_kernels(model))


def test_compile_auto_policy():
    """auto compiles the attention blocks on CUDA (measured faster there) and nothing on the CPU."""
    hybrid = preset("tiny")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert compiled_layer_types("auto", hybrid, cuda) == ("attention",)
    assert compiled_layer_types("auto", hybrid, cpu) == ()
    assert compiled_layer_types(True, hybrid, cpu) == ("gdn", "attention")
    assert compiled_layer_types(False, hybrid, cuda) == ()


def test_only_the_compiled_blocks_get_the_compile_flavour(monkeypatch):
    """With FLA usable (faked), compiling the attention blocks leaves the GDN blocks on the eager record."""
    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (True, "faked"))
    monkeypatch.setattr(fused, "load", lambda: {"rms_norm": 0, "rms_norm_gated": 0, "causal_conv1d": 0,
                                                 "swiglu": 0, "linear_cross_entropy": 0})
    torch.manual_seed(0)
    model = HybridLM(preset("tiny").model)
    eager, compiled = resolve_kernels("auto", "cuda"), resolve_kernels("auto", "cuda", for_compile=True)
    model.compiled_layers = tuple(i for i, t in enumerate(model.config.layer_types) if t == "attention")
    model.use_kernels(eager, compiled)
    for i, block in enumerate(model.model.layers):
        expected = compiled if i in model.compiled_layers else eager
        assert all(m.kernels is expected for m in modules_with_kernels(block))
    assert model.kernels is eager and model.compiled_layers and len(model.compiled_layers) < len(model.model.layers)


def test_results_record_the_kernels_and_the_first_step(tmp_path):
    from hybridlm.train import train

    results = train(resolve(preset="tiny", values={"train.max_steps": 4, "train.eval_interval": 4}),
                    out=tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["environment"]["kernels"]["gdn"] == "torch" and saved["environment"]["compiled"] is False
    assert results["results"]["first_step_s"] > 0


@pytest.mark.slow
def test_compiled_blocks_equal_eager_on_cpu():
    """torch.compile of each block (the torch kernel flavour) computes what eager computes: loss and grads."""
    torch.manual_seed(0)
    eager = HybridLM(preset("tiny").model)
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled)
    assert compiled.compiled_layers == tuple(range(len(compiled.model.layers)))
    assert all(m.kernels.names == compiled.kernels.names for m in modules_with_kernels(compiled))
    ids = torch.randint(0, 1000, (2, 64))
    a, b = eager(ids, labels=ids).loss, compiled(ids, labels=ids).loss
    a.backward()
    b.backward()
    assert abs(a.item() - b.item()) < 1e-5
    grads = dict(eager.named_parameters())
    assert max((p.grad - grads[n].grad).abs().max().item() for n, p in compiled.named_parameters()) < 1e-5
    assert list(dict(compiled.state_dict())) == list(dict(eager.state_dict()))  # names unchanged by compile
    assert TORCH_KERNELS.backend == "torch"
