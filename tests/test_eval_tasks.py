"""Task scoring end to end on the hand-computable bigram model, prompts and few-shot sampling vs lm-eval."""

from __future__ import annotations

import gzip
import json
import math

import pytest
from test_eval_helpers import CharTokenizer, TableLM, gpt2, logp, tiny_hybrid

pytestmark = pytest.mark.usefixtures("single_torch_thread")

from hybridlm.evaluation import evaluate
from hybridlm.evaluation.fewshot import fewshot_prefixes, render_example
from hybridlm.evaluation.metrics import mean_stderr
from hybridlm.evaluation.sources import builtin_subsets_dir, read_jsonl_docs
from hybridlm.evaluation.tasks import TASKS


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_arc_acc_and_acc_norm_by_hand(tmp_path):
    """Prompts end in ':' (token "c"), so each answer's score is c->' ' and then the answer's letters.
    " a" = log .5 + log .5 beats " bb" = log .5 + log .25 + log .8 on the sum, loses per character."""
    rows = [
        {"question": "Q1?", "choices": ["a", "bb"], "labels": ["A", "B"], "answer_index": 1},
        {"question": "Q2?", "choices": ["a", "bb"], "labels": ["A", "B"], "answer_index": 0},
        {"question": "Q3?", "choices": ["b", "a"], "labels": ["A", "B"], "answer_index": 1},
    ]
    write_jsonl(tmp_path / "arc_challenge_test.jsonl", rows)
    result = evaluate(TableLM(), CharTokenizer(), "arc_challenge", data_dir=tmp_path, keep_samples=True,
                      use_hub=False)["tasks"]["arc_challenge"]
    ll_a, ll_bb, ll_b = logp(("c", " "), (" ", "a")), logp(("c", " "), (" ", "b"), ("b", "b")), \
        logp(("c", " "), (" ", "b"))
    assert ll_a > ll_bb and ll_a / 1 < ll_bb / 2  # the case where acc and acc_norm disagree
    first = result["samples"][0]
    assert first["loglikelihoods"] == pytest.approx([ll_a, ll_bb], abs=1e-5)
    assert (first["pred"], first["pred_norm"]) == (0, 1)
    assert [s["acc"] for s in result["samples"]] == [0.0, 1.0, 1.0]
    assert [s["acc_norm"] for s in result["samples"]] == [1.0, 0.0, 1.0]
    assert result["samples"][2]["loglikelihoods"] == pytest.approx([ll_b, ll_a], abs=1e-5)
    assert result["metrics"] == pytest.approx({"acc": 2 / 3, "acc_norm": 2 / 3})
    # sample standard error of the mean of [0, 1, 1]: sqrt(1/3) / sqrt(3)
    assert result["stderr"]["acc"] == pytest.approx(math.sqrt(1 / 3) / math.sqrt(3))
    assert result["count"] == 3 and result["split"] == "test"


def test_lambada_last_word_accuracy_and_perplexity_by_hand(tmp_path):
    write_jsonl(tmp_path / "lambada_openai_test.jsonl", [{"text": t} for t in ["Say c a", "c b", "x a bb"]])
    result = evaluate(TableLM(), CharTokenizer(), "lambada", data_dir=tmp_path, keep_samples=True,
                      use_hub=False)["tasks"]["lambada"]
    lls = [logp(("c", " "), (" ", "a")),  # greedy: ' ' after c, then a after ' '
           logp(("c", " "), (" ", "b")),  # b is not the argmax after ' '
           logp(("a", " "), (" ", "b"), ("b", "b"))]  # first token greedy, second not
    assert [s["loglikelihood"] for s in result["samples"]] == pytest.approx(lls, abs=1e-5)
    assert [s["is_greedy"] for s in result["samples"]] == [True, False, False]
    assert result["metrics"]["acc"] == pytest.approx(1 / 3)
    assert result["metrics"]["perplexity"] == pytest.approx(math.exp(-sum(lls) / 3), rel=1e-5)


def test_mean_stderr_is_lm_evals():
    from lm_eval.api.metrics import mean_stderr as lm_eval_mean_stderr

    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert mean_stderr(values) == pytest.approx(lm_eval_mean_stderr(values))
    assert mean_stderr([1.0]) is None


def test_hellaswag_prompts_equal_lm_evals_process_docs():
    import datasets
    from lm_eval.tasks.hellaswag.utils import process_docs

    spec = TASKS["hellaswag"]
    docs = read_jsonl_docs(spec, builtin_subsets_dir() / "hellaswag_validation.jsonl.gz")
    assert any("[title]" in d["ctx"] or "[step]" in d["ctx"] for d in docs)  # the WikiHow markers are there
    theirs = process_docs(datasets.Dataset.from_list(docs))
    for doc, processed in zip(docs, theirs):
        example = spec.to_example(doc)
        assert example.query == processed["query"]
        assert example.choices == processed["choices"]
        assert example.gold == processed["gold"]
        assert example.continuations == [" " + c for c in processed["choices"]]


@pytest.mark.parametrize("exclude_eval_doc", [False, True])
def test_fewshot_draws_equal_lm_evals_sampler(exclude_eval_doc):
    from lm_eval.api.samplers import ContextSampler

    spec = TASKS["arc_challenge"]
    pool = read_jsonl_docs(spec, builtin_subsets_dir() / "arc_challenge_test.jsonl.gz")
    eval_docs = pool[:12]
    examples = [spec.to_example(d) for d in pool]
    ours = fewshot_prefixes(pool, examples, eval_docs, k=3, exclude_eval_doc=exclude_eval_doc)
    sampler = ContextSampler(pool, rnd=None).set_rnd(1234)
    for doc, prefix in zip(eval_docs, ours):
        drawn = sampler.sample(n=3, eval_doc=doc if exclude_eval_doc else None)
        assert prefix == "".join(render_example(spec.to_example(d)) for d in drawn)
        if exclude_eval_doc:
            assert spec.to_example(doc).query not in prefix
    assert ours[0].count("\n\n") == 3 and ours[0].startswith("Question: ")


def test_limit_and_batch_size_leave_per_document_scores_unchanged():
    tok = gpt2()
    model = tiny_hybrid(tok.vocab_size, seed=2)
    full = evaluate(model, tok, "arc_challenge", data_dir="builtin-subsets", batch_size=7, keep_samples=True,
                    use_hub=False)["tasks"]["arc_challenge"]
    some = evaluate(model, tok, "arc_challenge", data_dir="builtin-subsets", batch_size=1, limit=10,
                    keep_samples=True, use_hub=False)["tasks"]["arc_challenge"]
    assert full["count"] == 40 and some["count"] == 10
    for a, b in zip(full["samples"][:10], some["samples"]):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
        assert (a["pred"], a["pred_norm"]) == (b["pred"], b["pred_norm"])
    assert some["metrics"]["acc"] == pytest.approx(sum(s["acc"] for s in full["samples"][:10]) / 10)


def test_shipped_subsets_are_the_documented_cuts():
    """First 40 ARC-Challenge test / LAMBADA test rows; HellaSwag first 20 + first 20 WikiHow rows."""
    root = builtin_subsets_dir()
    for name, count in [("arc_challenge_test", 40), ("hellaswag_validation", 40), ("lambada_openai_test", 40)]:
        rows = [json.loads(line) for line in gzip.open(root / f"{name}.jsonl.gz", "rt", encoding="utf-8")]
        assert len(rows) == count
    hellaswag = [json.loads(line) for line in gzip.open(root / "hellaswag_validation.jsonl.gz", "rt")]
    assert sum(r["source_id"].startswith("wikihow") for r in hellaswag) == 20
    assert (root / "PROVENANCE.md").is_file()
