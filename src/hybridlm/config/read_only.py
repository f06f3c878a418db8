"""Config sections that refuse assignment once resolved.

`hybridlm.config.resolve` returns a read-only value, so nothing downstream (the trainer, a sweep,
resume) can change the experiment after it was validated and recorded. Changing a setting means
resolving a new config, which validates it again.
"""

from __future__ import annotations

from typing import Any

from hybridlm.errors import ConfigError


class ReadOnlyWhenResolved:
    """Mixin for the config dataclasses: assignment raises once `_resolved` is set."""

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_resolved", False):
            raise ConfigError(f"cannot set {type(self).__name__}.{name}: a resolved config is read-only; build a "
                              "changed one with hybridlm.config.resolve(base=config, values={...}) or config.copy()")
        object.__setattr__(self, name, value)

    def _mark_resolved(self) -> None:
        object.__setattr__(self, "_resolved", True)
