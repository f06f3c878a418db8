"""Run directories: config, tokenizer, metrics, results, plots and checkpoints of one training run."""

from hybridlm.runs.loading import load_run, load_run_config
from hybridlm.runs.run_dir import RunDir, find_run_dir

__all__ = ["RunDir", "find_run_dir", "load_run", "load_run_config"]
