"""Documents from a Hugging Face dataset, streamed so that only `doc_limit` documents are fetched.

`hf:NAME[:CONFIG][:SPLIT]` becomes `datasets.load_dataset(NAME, CONFIG, split=SPLIT, streaming=True)`.
NAME is whatever `load_dataset` accepts as its path: a hub id (``roneneldan/TinyStories``) or a local
directory holding .jsonl / .json / .parquet / .csv files (``hf:/data/my_corpus``). The local form runs
exactly the same call as the hub form, which is how the tests exercise this path without a network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from hybridlm.errors import DataError

from .file_readers import text_of_record


@dataclass(frozen=True)
class HFDatasetSpec:
    """The parts of an ``hf:NAME[:CONFIG][:SPLIT]`` source spec."""

    name: str
    config: str | None
    split: str

    @classmethod
    def parse(cls, spec: str) -> HFDatasetSpec:
        parts = spec[len("hf:"):].split(":")
        if len(parts) > 3 or not parts[0].strip():
            raise DataError(f"data.source '{spec}' is not of the form hf:NAME[:CONFIG][:SPLIT] "
                            "(e.g. hf:roneneldan/TinyStories or hf:wikitext:wikitext-2-raw-v1:train)")
        name = parts[0].strip()
        config = parts[1].strip() if len(parts) > 1 and parts[1].strip() else None
        split = parts[2].strip() if len(parts) > 2 and parts[2].strip() else "train"
        return cls(name, config, split)


def iter_hf_documents(spec: str, text_field: str) -> Iterator[str]:
    """Stream the `text_field` of every row; empty texts are skipped like in local files."""
    parsed = HFDatasetSpec.parse(spec)
    try:
        import datasets
    except ImportError:
        raise DataError(f"data.source '{spec}' needs the datasets package; "
                        "install it with pip install 'hybridlm[hf]'") from None
    try:
        rows = iter(datasets.load_dataset(parsed.name, parsed.config, split=parsed.split, streaming=True))
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError...)
        raise DataError(f"could not load dataset '{parsed.name}' (config {parsed.config}, split {parsed.split}) "
                        f"for data.source '{spec}': {_first_line(e)}; check the name, config and split, "
                        "or the network") from None
    row_no = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:
            raise DataError(f"reading data.source '{spec}' failed after {row_no} rows: {_first_line(e)}; "
                            "check the network or use a local copy") from None
        row_no += 1
        text = text_of_record(row, text_field, f"data.source '{spec}' row {row_no}")
        if text.strip():
            yield text


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
