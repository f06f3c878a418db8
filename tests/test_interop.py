"""FLA interop: our state dict is FLA's, checkpoints load both ways, configs translate exactly."""

import json
import warnings

import pytest
import torch

from hybridlm.config import ModelConfig, preset
from hybridlm.config.model_config import AttentionConfig
from hybridlm.interop import from_fla_config, load_fla, save_fla, to_fla_config
from hybridlm.model import HybridLM
from hybridlm.model.accounting import count_parameters


def tiny_config(**kwargs) -> ModelConfig:
    base = dict(vocab_size=101, hidden_size=64, num_hidden_layers=3, num_heads=2, head_dim=32, expand_v=1.0,
                hidden_ratio=4, kernels="torch")
    base.update(kwargs)
    return ModelConfig(**base)


def test_round_trip_through_our_own_export(tmp_path):
    config = tiny_config(attention_layers=[1], attention=AttentionConfig(num_heads=4, num_kv_heads=2, window_size=8))
    model = HybridLM(config)
    save_fla(model, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "gated_deltanet"
    assert written["attn"] == {"layers": [1], "num_heads": 4, "num_kv_heads": 2, "qkv_bias": False,
                               "window_size": 8, "rope_theta": 10000.0}
    loaded = load_fla(tmp_path)
    assert loaded.config.layout_string == "GAG"
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name_b and torch.equal(a, b)


def test_config_translation_round_trip():
    config = tiny_config(num_v_heads=4, expand_v=2.0, allow_neg_eigval=True, tie_word_embeddings=True,
                         attention_layers=[0, 2], attention=AttentionConfig(num_heads=4))
    back = from_fla_config(to_fla_config(config))
    assert back.layout_string == config.layout_string
    for field in ("num_v_heads", "expand_v", "allow_neg_eigval", "tie_word_embeddings", "head_dim",
                  "mlp_intermediate_size"):
        assert getattr(back, field) == getattr(config, field)


@pytest.fixture(scope="module")
def fla_models():
    pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fla_models = pytest.importorskip("fla.models")
    return fla_models


@pytest.mark.parametrize("extra", [{}, dict(num_v_heads=4, expand_v=2.0), dict(use_gate=False),
                                   dict(tie_word_embeddings=True)])
def test_state_dict_names_and_shapes_equal_fla(fla_models, extra, tmp_path):
    config = tiny_config(**extra)
    fla_config = fla_models.GatedDeltaNetConfig(**{k: v for k, v in to_fla_config(config).items()
                                                  if k not in ("model_type", "architectures")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fla_models.GatedDeltaNetForCausalLM(fla_config)
    ours = HybridLM(config)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs_shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert ours_shapes == theirs_shapes
    ours.load_state_dict(theirs.state_dict(), strict=True)        # FLA -> ours
    theirs.load_state_dict(HybridLM(config).state_dict(), strict=True)  # ours -> FLA
    assert count_parameters(ours)["total"] == sum(p.numel() for p in theirs.parameters())


def test_our_export_loads_into_fla_strict_and_back(fla_models, tmp_path):
    ours = HybridLM(tiny_config())
    save_fla(ours, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fla_models.GatedDeltaNetForCausalLM.from_pretrained(str(tmp_path / "ours"))
        theirs.save_pretrained(str(tmp_path / "theirs"))
    for name, tensor in ours.state_dict().items():
        assert torch.equal(theirs.state_dict()[name], tensor)
    again = load_fla(tmp_path / "theirs")
    assert torch.equal(again.lm_head.weight, ours.lm_head.weight)


def test_our_op_matches_fla_naive_reference(fla_models):
    """FLA's own float reference recurrence (runs on CPU) against our chunked op."""
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    from hybridlm.ops import gated_delta_rule

    torch.manual_seed(0)
    b, t, h, k, v = 2, 70, 2, 16, 24
    q = torch.nn.functional.normalize(torch.randn(b, t, h, k, dtype=torch.float64), dim=-1)
    kk = torch.nn.functional.normalize(torch.randn(b, t, h, k, dtype=torch.float64), dim=-1)
    vv = torch.randn(b, t, h, v, dtype=torch.float64)
    g = -torch.rand(b, t, h, dtype=torch.float64)
    beta = torch.rand(b, t, h, dtype=torch.float64)
    h0 = torch.randn(b, h, k, v, dtype=torch.float64)
    ours, ours_state = gated_delta_rule(q, kk, vv, g, beta, initial_state=h0, output_final_state=True,
                                        backend="torch", mode="chunk")
    theirs, theirs_state = naive_recurrent_gated_delta_rule(q, kk, vv, beta, g, initial_state=h0,
                                                            output_final_state=True)
    assert (ours - theirs.to(ours)).abs().max() < 1e-5  # FLA's reference computes in float32
    assert (ours_state - theirs_state.to(ours_state)).abs().max() < 1e-5


def test_reference_preset_sizes():
    """The reference's H100 models: pure GDN 302.7M and the transformer ~188.8M at vocab 49152."""
    def params(name):
        config = preset(name).model
        config.vocab_size = 49152
        with torch.device("meta"):
            return count_parameters(HybridLM(config))["total"]

    assert round(params("h100_deltanet") / 1e6, 1) == 302.7
    assert round(params("h100_transformer") / 1e6, 1) == 188.8
    assert params("h100_deltanet") == params("h100_base")


def test_fused_gate_training_path_follows_fla_contract(fla_models, monkeypatch):
    """On CUDA the mixer hands FLA raw a/b projections with use_gate_in_kernel / use_beta_sigmoid_in_kernel,
    as FLA's own layer does: through FLA's own function (eager training) and through the
    `hybridlm::gdn_chunk` custom op (compiled blocks; its CPU kernel is the reference). Here FLA's function
    is replaced by its documented semantics (computed with our torch op), so the test proves the wiring:
    same logits as the explicit-gate path, float64."""
    from dataclasses import replace

    import fla.ops.gated_delta_rule as fla_gdr
    import torch.nn.functional as F

    from hybridlm.model import fused
    from hybridlm.model.kernels import TORCH_KERNELS
    from hybridlm.ops import gdn_fla, gated_delta_rule

    calls = []

    def fake_chunk(q, k, v, g, beta, initial_state=None, output_final_state=False, **kwargs):
        calls.append(kwargs)
        assert kwargs["use_gate_in_kernel"] and kwargs["use_beta_sigmoid_in_kernel"]
        assert kwargs["use_qk_l2norm_in_kernel"] and initial_state is None and not output_final_state
        decay = -kwargs["A_log"].exp() * F.softplus(g + kwargs["dt_bias"])
        beta = beta.sigmoid() * (2.0 if kwargs["allow_neg_eigval"] else 1.0)
        return gated_delta_rule(q, k, v, decay, beta, backend="torch", use_qk_l2norm_in_kernel=True)

    torch.manual_seed(0)
    config = tiny_config(attention_layers=[1], allow_neg_eigval=True, attention=AttentionConfig(num_heads=4))
    reference = HybridLM(config).double()
    ids = torch.randint(0, 101, (2, 70))
    expected = reference(ids).logits

    monkeypatch.setattr(fla_gdr, "chunk_gated_delta_rule", fake_chunk)
    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (True, "faked for the test"))
    reference.use_kernels(replace(TORCH_KERNELS, gdn_train=fused.gdn_train_op))  # compiled blocks' call
    assert (reference(ids).logits - expected).abs().max().item() < 1e-12 and not calls
    reference.use_kernels(replace(TORCH_KERNELS, gdn_train=fused.gdn_train))  # eager training's call
    got = reference(ids).logits
    assert len(calls) == 2  # the two GDN layers
    assert (got - expected).abs().max().item() < 1e-12
