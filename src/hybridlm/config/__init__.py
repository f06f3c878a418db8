"""Typed configuration: model / data / train / run / fla sections, presets, TOML and overrides."""

from hybridlm.config.config import Config, parse_assignment, set_value
from hybridlm.config.data_config import DataConfig
from hybridlm.config.model_config import AttentionConfig, ModelConfig
from hybridlm.config.train_config import FlaConfig, RunConfig, TrainConfig

__all__ = ["Config", "ModelConfig", "AttentionConfig", "DataConfig", "TrainConfig", "RunConfig",
           "FlaConfig", "parse_assignment", "set_value"]
from hybridlm.config.presets import PRESETS, preset, preset_names  # noqa: E402

from hybridlm.config.resolve import RESUME_SAFE_KEYS, changed_keys, resolve, resume_changes  # noqa: E402

__all__ += ["PRESETS", "preset", "preset_names", "resolve", "resume_changes", "changed_keys", "RESUME_SAFE_KEYS"]
