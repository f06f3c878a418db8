"""Turn a `data.source` spec into a stream of documents (plain strings).

Spec forms (see `DataConfig`): ``embedded`` / ``embedded:a+b`` (the corpus shipped in the package),
a local file, directory (scanned recursively, sorted) or glob, and ``hf:NAME[:CONFIG][:SPLIT]``.
`resolve_source` checks everything that can be checked without reading the text (missing paths,
empty globs, unknown corpus names), so these mistakes surface before any work is done.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hybridlm.errors import DataError

from .file_readers import SCANNED_SUFFIXES, iter_file_documents
from .hf_source import HFDatasetSpec, iter_hf_documents

CORPUS_DIR = Path(__file__).parent / "corpus"
# The order is fixed so that ``embedded`` means the same token stream everywhere.
EMBEDDED_SOURCES: tuple[str, ...] = ("shakespeare", "kjv_bible", "state_of_the_union", "moby_dick")
_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class ResolvedSource:
    """A source spec after validation: either a list of files or a Hugging Face dataset."""

    spec: str
    kind: str  # "embedded", "files" or "hf"
    files: tuple[Path, ...] = ()

    def identity(self) -> dict:
        """What the cached shards depend on: the spec plus, for files, each file's size and mtime,
        so that editing a local file invalidates the cache instead of silently serving old tokens."""
        if self.kind == "hf":
            return {"spec": self.spec}
        stats = []
        for path in self.files:
            st = path.stat()
            entry = [str(path) if self.kind == "files" else path.name, st.st_size]
            if self.kind == "files":
                entry.append(st.st_mtime_ns)
            stats.append(entry)
        return {"spec": self.spec, "files": stats}


def resolve_source(spec: str) -> ResolvedSource:
    """Validate a source spec and list its files; raises `DataError` naming the spec and the fix."""
    spec = (spec or "").strip()
    if not spec:
        raise DataError("data.source is empty; use 'embedded', a local file/directory/glob or hf:NAME")
    if spec == "embedded" or spec.startswith("embedded:"):
        return ResolvedSource(spec, "embedded", _embedded_files(spec))
    if spec.startswith("hf:"):
        HFDatasetSpec.parse(spec)
        return ResolvedSource(spec, "hf")
    return ResolvedSource(spec, "files", _local_files(spec))


def iter_documents(source: str | ResolvedSource, text_field: str = "text",
                   doc_limit: int | None = None) -> Iterator[str]:
    """Yield the documents of a source in a fixed order, at most `doc_limit` of them."""
    resolved = source if isinstance(source, ResolvedSource) else resolve_source(source)
    if doc_limit is not None and doc_limit < 1:
        raise DataError(f"data.doc_limit is {doc_limit}; use a positive number or leave it unset")
    if resolved.kind == "hf":
        docs = iter_hf_documents(resolved.spec, text_field)
    else:
        docs = itertools.chain.from_iterable(iter_file_documents(p, text_field) for p in resolved.files)
    count = 0
    for doc in itertools.islice(docs, doc_limit):
        count += 1
        yield doc
    if count == 0:
        raise DataError(f"data.source '{resolved.spec}' yielded no documents; check data.source and data.text_field")


def embedded_names(spec: str) -> tuple[str, ...]:
    """The corpus names of an ``embedded[:a+b]`` spec, in the fixed package order."""
    if spec == "embedded":
        return EMBEDDED_SOURCES
    wanted = [n.strip() for n in spec[len("embedded:"):].split("+")]
    for name in wanted:
        if name not in EMBEDDED_SOURCES:
            raise DataError(f"unknown embedded corpus '{name}' in data.source '{spec}'; choose from "
                            f"{', '.join(EMBEDDED_SOURCES)} joined by '+' (e.g. embedded:shakespeare+moby_dick)")
    return tuple(n for n in EMBEDDED_SOURCES if n in wanted)


def _embedded_files(spec: str) -> tuple[Path, ...]:
    files = tuple(CORPUS_DIR / f"{name}.txt.xz" for name in embedded_names(spec))
    for path in files:
        if not path.is_file():
            raise DataError(f"the embedded corpus file {path} is missing; reinstall hybridlm")
    return files


def _local_files(spec: str) -> tuple[Path, ...]:
    pattern = os.path.expanduser(spec)
    if any(c in pattern for c in _GLOB_CHARS):
        matches = sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise DataError(f"data.source glob '{spec}' matched no files; check the pattern "
                            "(quote it so the shell does not expand it)")
        files: list[Path] = []
        for match in matches:
            path = Path(match)
            files.extend(_scan_directory(path, spec) if path.is_dir() else [path])
        return tuple(files)
    path = Path(pattern)
    if not path.exists():
        raise DataError(f"data.source '{spec}' does not exist; pass an existing file, directory or glob, "
                        "'embedded', or hf:NAME")
    if path.is_dir():
        return tuple(_scan_directory(path, spec))
    return (path,)


def _scan_directory(directory: Path, spec: str) -> list[Path]:
    """Supported files below `directory`, recursively, sorted by path; hidden entries are skipped."""
    found = []
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if not name.startswith(".") and name.lower().endswith(SCANNED_SUFFIXES):
                found.append(Path(root) / name)
    if not found:
        raise DataError(f"directory {directory} (data.source '{spec}') contains no "
                        f"{' / '.join(SCANNED_SUFFIXES)} files; point data.source at the text files")
    return sorted(found)
