"""Replace a file in one step: write a hidden temporary sibling, then rename it over the target.

Readers (a sweep polling results, `compare`, a resumed run) never see a half-written file, and a
crash mid-write leaves the previous version intact. A failed write (a full disk) removes its temporary file.

JSON written here is strict: NaN and +-Infinity (which `json.dumps` writes by default, and which strict
parsers such as JavaScript's or `jq` reject) become `null`, recursively.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def json_safe(data: Any) -> Any:
    """`data` with every non-finite float (NaN, inf, -inf) replaced by None, recursively.

    Dicts, lists and tuples are rebuilt (tuples become lists, as JSON has no tuples); other values are
    returned as they are, so anything `json.dumps` rejects is still rejected.
    """
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: json_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(value) for value in data]
    return data


def dumps_strict(data: Any, **kwargs: Any) -> str:
    """`json.dumps` that never writes NaN / Infinity: non-finite floats become null."""
    return json.dumps(json_safe(data), allow_nan=False, **kwargs)


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise
    return path


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, dumps_strict(data, indent=indent) + "\n")
