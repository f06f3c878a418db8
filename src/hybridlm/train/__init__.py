"""Training: optimizer, schedule, precision, the loop and its launcher. Knows nothing about the CLI."""

from hybridlm.train.launch import train

__all__ = ["train"]
