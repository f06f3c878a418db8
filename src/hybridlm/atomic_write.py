"""Replace a file in one step: write a hidden temporary sibling, then rename it over the target.

Readers (a sweep polling results, `compare`, a resumed run) never see a half-written file, and a
crash mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=indent) + "\n")
