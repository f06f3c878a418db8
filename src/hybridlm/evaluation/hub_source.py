"""The Hugging Face hub as the last data source, tried only when it answers.

`datasets.load_dataset` retries an unreachable hub for ~25 s per call; a 3-second TCP probe of the
endpoint (once per process) skips that. With HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set, only the
local `datasets` cache is consulted.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from hybridlm.evaluation.tasks import TaskSpec

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def offline_mode() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARIABLES)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def load_from_hub(task: TaskSpec, split: str) -> tuple[list[dict], str] | None:
    """(rows, source) from the first of the task's hub datasets that loads, else None."""
    if not task.hub or not (offline_mode() or hub_reachable()):
        return None
    try:
        import datasets
    except ImportError:
        return None
    for path, config in task.hub:
        try:
            dataset = datasets.load_dataset(path, config, split=split)
        except Exception:  # noqa: BLE001 -- any failure means "try the next source"
            continue
        return [dict(row) for row in dataset], f"hub:{path}{'/' + config if config else ''}"
    return None
