"""Known-bad FLA / Triton / GPU combinations, detected before training starts.

FLA 0.6.0 refuses its gated chunk backward on Hopper (sm_90) with Triton >= 3.4 and < 3.7.1
because that Triton miscompiles `chunk_bwd_dqkwg` (FLA issue 640) — unless TileLang is installed,
in which case FLA routes those kernels through TileLang. The checks take versions as arguments so
they are testable on any machine.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re


def parse_version(text: str | None) -> tuple[int, ...]:
    """'3.6.0+git1234' -> (3, 6, 0); missing parts are zeros; None -> ()."""
    if not text:
        return ()
    numbers = [int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple(numbers + [0] * (3 - len(numbers)))


def fla_compat_problem(fla_version: str | None, triton_version: str | None, capability: tuple[int, int] | None,
                       has_tilelang: bool) -> str | None:
    """None when FLA can train here, else a one-line explanation with the exact fix."""
    if fla_version is None:
        return "flash-linear-attention is not installed (pip install flash-linear-attention==0.6.0)"
    fla, triton = parse_version(fla_version), parse_version(triton_version)
    if not triton:
        return "triton is not installed; FLA's kernels need it (pip install triton)"
    hopper = capability is not None and capability[0] == 9
    if fla[:2] == (0, 6) and hopper and (3, 4, 0) <= triton < (3, 7, 1) and not has_tilelang:
        return (f"FLA {fla_version} refuses its gated backward on Hopper with Triton {triton_version} "
                "(miscompiled chunk_bwd_dqkwg, FLA issue 640); install tilelang (pip install tilelang) "
                "or a PyTorch whose Triton is >= 3.7.1")
    return None


def installed_versions() -> dict[str, str | None]:
    """Versions of fla, triton and tilelang from package metadata (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for key, dists in {"fla": ("flash-linear-attention", "fla-core"), "triton": ("triton",),
                       "tilelang": ("tilelang",)}.items():
        versions[key] = None
        for dist in dists:
            try:
                versions[key] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    if versions["fla"] is None and importlib.util.find_spec("fla") is not None:
        from hybridlm.fla_source import fla_info

        versions["fla"] = fla_info()["version"] or "unknown"
    return versions
