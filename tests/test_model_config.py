"""Layouts and their validation: every bad layout is a one-line error naming the field."""

import pytest

from hybridlm.config import ModelConfig, preset
from hybridlm.config.model_config import AttentionConfig
from hybridlm.errors import ConfigError


def test_layout_string_and_list_agree():
    a = ModelConfig(num_hidden_layers=12, attention_layers=[5, 11])
    b = ModelConfig(num_hidden_layers=12, layout="GGGGGAGGGGGA")
    assert a.layout_string == b.layout_string == "GGGGGAGGGGGA"
    assert a.attention_layer_set == b.attention_layer_set == {5, 11}
    assert a.layer_types[5] == "attention" and a.layer_types[0] == "gdn"
    assert a.attention_fraction == pytest.approx(2 / 12)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_hidden_layers=4, attention_layers=[4]), "model.attention_layers"),
    (dict(num_hidden_layers=4, attention_layers=[-1]), "model.attention_layers"),
    (dict(num_hidden_layers=4, attention_layers=[1, 1]), "model.attention_layers"),
    (dict(num_hidden_layers=4, layout="GGXG"), "model.layout"),
    (dict(num_hidden_layers=4, layout="GGA"), "model.layout"),
    (dict(num_hidden_layers=4, layout="GGAG", attention_layers=[1]), "model.layout"),
    (dict(hidden_size=100, num_hidden_layers=2, attention_layers=[1], attention=AttentionConfig(num_heads=3)),
     "model.attention.num_heads"),
    (dict(num_hidden_layers=2, attention_layers=[1], attention=AttentionConfig(num_heads=12, num_kv_heads=5)),
     "model.attention.num_kv_heads"),
    (dict(num_heads=4, num_v_heads=6), "model.num_v_heads"),
    (dict(hidden_size=0), "model.hidden_size"),
    (dict(kernels="cuda"), "model.kernels"),
    (dict(head_dim=64, expand_v=0.3), "model.expand_v"),
])
def test_bad_layouts_are_one_line_errors(kwargs, field):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**kwargs)
    message = str(info.value)
    assert field in message and "\n" not in message


def test_fla_mlp_rule_and_explicit_intermediate():
    assert ModelConfig(hidden_size=64, hidden_ratio=4).mlp_intermediate_size == 256  # 170 rounded up to 256
    assert ModelConfig(hidden_size=768, intermediate_size=3072).mlp_intermediate_size == 3072


def test_every_preset_is_valid_and_h100_layouts_span_0_to_100_percent():
    from hybridlm.config.presets import H100_LAYOUTS, PRESETS

    for name in PRESETS:
        assert preset(name).model.num_hidden_layers > 0
    fractions = [preset(n).model.attention_fraction for n in H100_LAYOUTS]
    assert len(fractions) == 13 and fractions[0] == 0 and fractions[-1] == 1
    assert fractions == sorted(fractions)
