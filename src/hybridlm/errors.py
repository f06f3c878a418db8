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


class NonFiniteError(HybridLMError):
    """A loss, gradient or weight became NaN / inf: the run stops (or refuses to load) instead of going on."""


class RunLockedError(HybridLMError):
    """Another process is writing this run directory; two writers would mix their checkpoints and metrics."""


class TrainingInterrupted(HybridLMError):
    """SIGINT / SIGTERM stopped training after a consistent checkpoint; `exit_code` is 130 / 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
