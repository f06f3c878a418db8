"""Read documents out of local files (.txt, .jsonl, .parquet), one generator per format.

Every reader fails with a one-line `DataError` that names the file and the fix, because a bad
file found halfway through tokenisation should be as easy to fix as a typo in the config.
"""

from __future__ import annotations

import gzip
import json
import lzma
from collections.abc import Iterator
from pathlib import Path

from hybridlm.errors import DataError

DOC_SEPARATOR = "<|endoftext|>"
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
# Suffixes picked up when a directory is scanned; a file named explicitly is read whatever its name.
SCANNED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES


def iter_file_documents(path: Path, text_field: str) -> Iterator[str]:
    """Yield the documents of one file, choosing the reader by its suffix (unknown suffix = text)."""
    name = path.name.lower()
    if name.endswith(JSONL_SUFFIXES) or name.endswith(".json"):
        docs = _iter_jsonl(path, text_field)
    elif name.endswith(PARQUET_SUFFIXES):
        docs = _iter_parquet(path, text_field)
    else:
        docs = _iter_text(path)
    found = False
    for doc in docs:
        found = True
        yield doc
    if not found:
        raise DataError(f"{path} contains no documents (empty or only whitespace); remove it from data.source")


def split_documents(text: str) -> list[str]:
    """Cut a text at the `<|endoftext|>` separator; a text without it is one document.

    Only newlines around the separator are stripped, so indentation at the start of a document
    survives; pieces that are empty after that (e.g. a trailing separator) are dropped.
    """
    pieces = text.split(DOC_SEPARATOR) if DOC_SEPARATOR in text else [text]
    return [p.strip("\r\n") for p in pieces if p.strip()]


def _read_bytes(path: Path) -> bytes:
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        if name.endswith(".xz"):
            with lzma.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise DataError(f"{path} cannot be read ({e}); check that the file is complete and readable") from None


def _decode_utf8(raw: bytes, path: Path, where: str = "") -> str:
    if b"\x00" in raw:
        raise DataError(f"{path}{where} looks like a binary file (it contains NUL bytes); "
                        "pass UTF-8 text, .jsonl or .parquet files")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}{where} is not valid UTF-8 (bad byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "re-encode it as UTF-8 (e.g. iconv -t UTF-8)") from None


def _iter_text(path: Path) -> Iterator[str]:
    yield from split_documents(_decode_utf8(_read_bytes(path), path))


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """One JSON object per line; blank lines and empty texts are skipped, anything else is an error."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                line = _decode_utf8(raw, path, f" line {line_no}")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path} line {line_no} is not valid JSON ({e.msg}); "
                                    "expected one JSON object per line") from None
                text = text_of_record(record, text_field, f"{path} line {line_no}")
                if text.strip():
                    yield text
    except (OSError, EOFError) as e:
        raise DataError(f"{path} cannot be read ({e}); check that the file is complete and readable") from None


def text_of_record(record: object, text_field: str, where: str) -> str:
    """The text of one record; shared by the jsonl reader and the Hugging Face source."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is a JSON {type(record).__name__}, expected an object with a "
                        f"'{text_field}' field")
    if text_field not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise DataError(f"{where} has no field '{text_field}' (its keys: {keys}); "
                        "set data.text_field to the field that holds the text")
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field '{text_field}' is a {type(text).__name__}, expected a string; "
                        "set data.text_field to the field that holds the text")
    return text


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow; install it with pip install 'hybridlm[hf]'") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses for corrupt files
        raise DataError(f"{path} is not a readable parquet file ({type(e).__name__}: {e}); "
                        "check the file or convert it to .jsonl") from None
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(f"{path} has no column '{text_field}' (its columns: {', '.join(columns) or 'none'}); "
                        "set data.text_field to the column that holds the text")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for row, text in enumerate(batch.column(0).to_pylist()):
            if text is None:
                continue
            if not isinstance(text, str):
                raise DataError(f"{path}: column '{text_field}' holds {type(text).__name__} values, expected "
                                "strings; set data.text_field to the column that holds the text")
            if text.strip():
                yield text
