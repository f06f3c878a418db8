"""User-facing errors.

Everything a user can get wrong (a bad config value, a missing file, a corrupt checkpoint)
raises a subclass of `HybridLMError` with a one-line message naming the problem and the fix.
The CLI prints these messages without a traceback; anything else is a bug and keeps its traceback.
"""


class HybridLMError(Exception):
    """A mistake in the user's input or environment, explained in one line."""


class ConfigError(HybridLMError, ValueError):
    """A config field has a bad value; the message names the field."""


class DataError(HybridLMError, ValueError):
    """A data source, tokenizer or split cannot be used; the message names the file and the fix."""


class DataExhausted(HybridLMError):
    """The training stream ran out and `data.on_exhausted = "stop"` asked for a clean stop."""


class CheckpointError(HybridLMError):
    """A checkpoint or run directory is missing, incomplete or corrupt."""


class BackendError(HybridLMError, RuntimeError):
    """A kernel backend was requested that cannot run here (e.g. FLA missing, or tensors on CPU)."""
