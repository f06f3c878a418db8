"""Where `import fla` comes from: the pip install, a local clone, or nowhere.

A researcher editing kernels in a clone of flash-linear-attention points `fla.path` (or
`--fla-path`, or HYBRIDLM_FLA_PATH) at it. The clone goes first on the import path before anything
imports `fla`, and we check that `fla` really resolves inside it. Every result records the
source, path, version, and the clone's git commit and dirty flag. Nothing here imports `fla`
itself (that is slow and needs triton): locations come from import specs, versions from files.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from hybridlm.errors import BackendError

ENV_VAR = "HYBRIDLM_FLA_PATH"
_PIP_DISTRIBUTIONS = ("flash-linear-attention", "fla-core")
_activated: str | None = None


def resolve_fla_path(explicit: str | None = None) -> str | None:
    """The clone to use: an explicit path (CLI / config) wins over the environment variable."""
    return explicit or os.environ.get(ENV_VAR) or None


def activate_fla_source(path: str | None) -> dict:
    """Put a local FLA clone first on sys.path (if given) and return `fla_info()`.

    Fails clearly when the path holds no `fla` package, or when `fla` was already imported from
    somewhere else (then the clone can no longer take effect in this process).
    """
    global _activated
    path = resolve_fla_path(path)
    if path:
        root = Path(path).expanduser().resolve()
        if not (root / "fla" / "__init__.py").is_file():
            raise BackendError(f"fla path {root} holds no `fla` package (expected {root}/fla/__init__.py); "
                               "point it at the root of a flash-linear-attention clone")
        if "fla" in sys.modules:
            loaded = Path(getattr(sys.modules["fla"], "__file__", "") or "").resolve()
            if root not in loaded.parents:
                raise BackendError(f"fla was already imported from {loaded.parent} before the local clone {root} "
                                   "could be activated; set the path before anything imports fla")
        if str(root) in sys.path:
            sys.path.remove(str(root))
        sys.path.insert(0, str(root))
        importlib.invalidate_caches()
        _activated = str(root)
        spec = importlib.util.find_spec("fla")
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        if origin is None or root not in origin.parents:
            raise BackendError(f"`fla` resolves to {origin} instead of the local clone {root}; "
                               "check the path and that no other fla shadows it")
    return fla_info()


def fla_info() -> dict:
    """{source: pip | local_clone | none, path, version, commit, dirty} of the `fla` import."""
    if "fla" in sys.modules and getattr(sys.modules["fla"], "__file__", None):
        origin = Path(sys.modules["fla"].__file__).resolve()
    else:
        spec = importlib.util.find_spec("fla")
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
    if origin is None:
        return {"source": "none", "path": None, "version": None, "commit": None, "dirty": None}
    package_dir = origin.parent
    root = package_dir.parent
    installed = any(root.glob("flash_linear_attention-*.dist-info")) or any(root.glob("fla_core-*.dist-info"))
    is_clone = (_activated is not None and Path(_activated) == root) or not installed
    info = {"source": "local_clone" if is_clone else "pip", "path": str(package_dir),
            "version": _version(package_dir, use_metadata=not is_clone), "commit": None, "dirty": None}
    if is_clone:
        info["commit"], info["dirty"] = _git_state(root)
    return info


def _version(package_dir: Path, use_metadata: bool) -> str | None:
    if use_metadata:
        for dist in _PIP_DISTRIBUTIONS:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    init = package_dir / "__init__.py"
    match = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", init.read_text(errors="replace")) \
        if init.is_file() else None
    return match.group(1) if match else None


def _git_state(root: Path) -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                                timeout=10)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        return None, None
