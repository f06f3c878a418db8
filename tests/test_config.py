"""Config files and --set overrides: typed, aliased, and one-line errors for mistakes."""

import pytest

from hybridlm.config import Config, parse_assignment, preset, resolve
from hybridlm.errors import ConfigError


def test_set_parses_toml_literals_with_types():
    config = resolve(preset="h100_base", overrides=
        ["train.lr=2e-3", "model.attention_layers=[5,11]", "train.max_steps=300", "data.source=embedded:kjv_bible",
         "model.attention.window_size=none", "train.compile=true"])
    assert config.train.lr == 2e-3 and isinstance(config.train.lr, float)
    assert config.model.attention_layers == [5, 11] and config.model.layout_string == "GGGGGAGGGGGA"
    assert config.train.max_steps == 300 and config.data.source == "embedded:kjv_bible"
    assert config.model.attention.window_size is None and config.train.compile is True


def test_layout_string_replaces_attention_list_and_back():
    config = resolve(preset="h100_hybrid_sparse", overrides=["model.layout=AAAAAAAAAAAA"])
    assert config.model.attention_layers == [] and config.model.attention_fraction == 1.0
    back = resolve(base=config, overrides=["model.attention_layers=[11]"])
    assert back.model.layout is None and back.model.layout_string == "G" * 11 + "A"


def test_qwen3_next_aliases():
    config = resolve(preset="h100_base", overrides=
        ["model.linear_num_key_heads=6", "model.linear_key_head_dim=128", "model.linear_value_head_dim=256",
         "model.linear_num_value_heads=12", "model.linear_conv_kernel_dim=3"])
    m = config.model
    assert (m.num_heads, m.head_dim, m.expand_v, m.num_v_heads, m.conv_size) == (6, 128, 2.0, 12, 3)


@pytest.mark.parametrize("assignment, fragment", [
    ("train.lr=fast", "train.lr must be a number"),
    ("train.max_steps=1.5", "train.max_steps must be an integer"),
    ("train.max_stepz=10", "unknown config key 'train.max_stepz'"),
    ("optimizer.lr=1", "unknown config key 'optimizer.lr'"),
    ("model.attention_layers=5", "model.attention_layers must be a list"),
    ("model.attention_layers=[1,1]", "duplicate"),
    ("train.precision=fp8", "train.precision must be one of"),
    ("train.lr", "--set expects key=value"),
    ("train.compile=maybe", "train.compile must be true, false or \"auto\""),
])
def test_bad_overrides_are_one_line_errors(assignment, fragment):
    with pytest.raises(ConfigError) as info:
        resolve(preset="tiny", overrides=[assignment])
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_toml_round_trip(tmp_path):
    config = resolve(preset="h100_hybrid_25", overrides=["train.lr=5e-4", "run.name=x"])
    path = tmp_path / "c.toml"
    config.save(path)
    again = Config.load(path)
    assert again.to_dict() == config.to_dict()


def test_toml_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nhidden_sise = 3\n")
    with pytest.raises(ConfigError, match="hidden_sise"):
        Config.load(bad)
    bad.write_text("[trainer]\nlr = 1\n")
    with pytest.raises(ConfigError, match="unknown config section"):
        Config.load(bad)
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")


def test_parse_assignment_keeps_bare_words_as_strings():
    assert parse_assignment("data.tokenizer=bpe:512") == ("data.tokenizer", "bpe:512")
    assert parse_assignment("model.layout=GGA") == ("model.layout", "GGA")


def test_unknown_preset_suggests_names():
    with pytest.raises(ConfigError, match="did you mean"):
        preset("hybrid_sparse")


def test_unset_fields_survive_loading_over_a_preset(tmp_path):
    """A saved config is complete: loading it on top of a preset must not restore the preset's values."""
    config = resolve(preset="h100_hybrid_sparse", overrides=["model.attention.window_size=none"])
    path = tmp_path / "c.toml"
    config.save(path)
    assert 'window_size = "none"' in path.read_text()
    again = Config.load(path, base=preset("h100_hybrid_sparse"))
    assert again.model.attention.window_size is None
    assert again.to_dict() == config.to_dict()


def test_set_none_on_a_string_field_means_the_word():
    """`--set train.parallel=none` (none/null parse to None for nullable fields) is the choice "none"."""
    from hybridlm.config.config import parse_assignment

    config = resolve(preset="tiny", overrides=["train.parallel=none", "train.activation_checkpointing=none"])
    assert config.train.parallel == "none" and config.train.activation_checkpointing == "none"
    assert parse_assignment("model.attention.window_size=none") == ("model.attention.window_size", None)
