"""`hybridlm doctor`: what this machine offers and which GDN kernels `auto` will pick, and why."""

from __future__ import annotations

import platform
import sys

from hybridlm.fla_source import activate_fla_source, resolve_fla_path


def doctor_report() -> list[tuple[str, str]]:
    import torch

    from hybridlm.ops.fla_compat import installed_versions

    rows: list[tuple[str, str]] = [("python", f"{platform.python_version()} ({sys.executable})"),
                                   ("torch", torch.__version__)]
    cuda = torch.cuda.is_available()
    rows.append(("cuda", f"{torch.version.cuda} (available)" if cuda else
                 f"{torch.version.cuda or 'none'} (not available: CPU only)"))
    if cuda:
        cap = torch.cuda.get_device_capability(0)
        rows.append(("gpu", f"{torch.cuda.get_device_name(0)} (sm_{cap[0]}{cap[1]}, "
                     f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB) x {torch.cuda.device_count()}"))
        rows.append(("bf16", "supported" if torch.cuda.is_bf16_supported() else "not supported"))
    else:
        rows.append(("gpu", "none"))
    versions = installed_versions()
    rows.append(("triton", versions["triton"] or "not installed"))
    try:
        fla = activate_fla_source(resolve_fla_path())
    except Exception as exc:  # noqa: BLE001 - the doctor reports problems instead of failing
        fla = {"source": "error", "path": str(exc), "version": None, "commit": None, "dirty": None}
    fla_line = f"{fla['version'] or '?'} from {fla['source']} ({fla['path']})" if fla["source"] != "none" \
        else "not installed (pip install flash-linear-attention==0.6.0)"
    if fla.get("commit"):
        fla_line += f", commit {fla['commit'][:12]}{' (dirty)' if fla['dirty'] else ''}"
    rows.append(("fla", fla_line))
    rows.append(("tilelang", versions["tilelang"] or "not installed"))
    if cuda:
        from hybridlm.model.kernels import resolve_kernels

        record = resolve_kernels("auto", "cuda", strict=False).describe()
        reason = record.pop("reason")
        rows.append(("kernels (auto)", ", ".join(f"{k} {v}" for k, v in record.items()) + f" ({reason})"))
    else:
        rows.append(("kernels (auto)", "torch: no CUDA here, so the pure-PyTorch chunked kernels run"))
    return rows


def print_doctor() -> None:
    rows = doctor_report()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
