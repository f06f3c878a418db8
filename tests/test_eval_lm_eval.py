"""The key proof: lm-eval itself, run offline through our bridge on lm-eval's own task configs, gives
the numbers `hybridlm eval` gives, document by document -- and the bridge answers every request type."""

from __future__ import annotations

import gzip
import json
import math
from contextlib import nullcontext
from pathlib import Path

import pytest
from test_eval_helpers import CharTokenizer, TableLM, gpt2, logp, tiny_hybrid, write_run_dir

pytestmark = pytest.mark.usefixtures("single_torch_thread")

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from hybridlm.evaluation import evaluate  # noqa: E402
from hybridlm.evaluation.lm_eval_bridge import HybridLMEvalModel  # noqa: E402
from hybridlm.evaluation.sources import builtin_subsets_dir  # noqa: E402
from hybridlm.evaluation.tasks import TASKS  # noqa: E402

OFFICIAL = Path(lm_eval.__file__).parent / "tasks"
PAIRS = [("arc_challenge", "local_arc_challenge"), ("hellaswag", "local_hellaswag"), ("lambada", "local_lambada")]


def local_task(directory: Path, name: str, official: Path, split: str, data: Path) -> None:
    """lm-eval's official task config with only the data swapped for a local JSON file."""
    (directory / f"{name}.yaml").write_text(
        f"include: {official}\ntask: {name}\ntag: []\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data}\ntraining_split: null\n"
        f"validation_split: {split if split == 'validation' else 'null'}\n"
        f"test_split: {split if split == 'test' else 'null'}\n")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    subsets = builtin_subsets_dir()
    # ARC goes back to the Hugging Face schema, so the official doc_to_choice / doc_to_target apply unchanged
    with open(directory / "arc.jsonl", "w") as f:
        for line in gzip.open(subsets / "arc_challenge_test.jsonl.gz", "rt", encoding="utf-8"):
            r = json.loads(line)
            f.write(json.dumps({"id": r["id"], "question": r["question"],
                                "choices": {"text": r["choices"], "label": r["labels"]},
                                "answerKey": r["labels"][r["answer_index"]]}) + "\n")
    local_task(directory, "local_arc_challenge", OFFICIAL / "arc" / "arc_challenge.yaml", "test",
               directory / "arc.jsonl")
    local_task(directory, "local_hellaswag", OFFICIAL / "hellaswag" / "hellaswag.yaml", "validation",
               subsets / "hellaswag_validation.jsonl.gz")
    local_task(directory, "local_lambada", OFFICIAL / "lambada" / "lambada_openai.yaml", "test",
               subsets / "lambada_openai_test.jsonl.gz")
    return directory


def run_lm_eval(lm, task_dir: Path, tasks: list[str], num_fewshot: int = 0) -> dict:
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, log_samples=True,
                                   bootstrap_iters=0, task_manager=TaskManager(include_path=str(task_dir),
                                                                               include_defaults=False))


@pytest.fixture(scope="module")
def hybrid():
    tok = gpt2()
    return tiny_hybrid(tok.vocab_size, seed=0), tok


@pytest.mark.parametrize("num_fewshot", [0, 2])
def test_same_numbers_as_lm_eval(hybrid, task_dir, num_fewshot):
    model, tok = hybrid
    # no train split is shipped: the pools fall back to validation / test, as in the local lm-eval configs
    with pytest.warns(UserWarning, match="few-shot examples come from") if num_fewshot else nullcontext():
        ours = evaluate(model, tok, "arc_challenge,hellaswag,lambada", data_dir="builtin-subsets", batch_size=8,
                        num_fewshot=num_fewshot, max_length=96, keep_samples=True, use_hub=False)["tasks"]
    theirs = run_lm_eval(HybridLMEvalModel(model=model, tokenizer=tok, batch_size=8, max_length=96), task_dir,
                         [t for _, t in PAIRS], num_fewshot)
    for mine, name in PAIRS:
        for metric, value in ours[mine]["metrics"].items():
            assert round(value, 4) == round(theirs["results"][name][f"{metric},none"], 4), (mine, metric)
        docs = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
        assert len(docs) == ours[mine]["count"] == 40
        for sample, mine_sample in zip(docs, ours[mine]["samples"]):
            lls = [resp[0][0] for resp in sample["resps"]]
            want = mine_sample.get("loglikelihoods") or [mine_sample["loglikelihood"]]
            assert lls == pytest.approx(want, abs=1e-4)
        if num_fewshot == 0 and mine != "lambada":  # the prompts are the very same strings
            examples = [TASKS[mine].to_example(d) for d in _docs(mine)]
            assert [s["arguments"][0][0] for s in docs] == [ex.query for ex in examples]
    if num_fewshot == 0:  # a random model still separates acc from acc_norm here
        assert ours["hellaswag"]["metrics"]["acc"] != ours["hellaswag"]["metrics"]["acc_norm"]


def _docs(task: str) -> list[dict]:
    from hybridlm.evaluation.sources import load_split

    return load_split(TASKS[task], data_dir="builtin-subsets").docs


def test_lm_eval_lambada_on_the_hand_checked_model(tmp_path):
    texts = ["Say c a", "c b", "x a bb"]
    (tmp_path / "lambada.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    local_task(tmp_path, "hand_lambada", OFFICIAL / "lambada" / "lambada_openai.yaml", "test",
               tmp_path / "lambada.jsonl")
    result = run_lm_eval(HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer()), tmp_path,
                         ["hand_lambada"])["results"]["hand_lambada"]
    lls = [logp(("c", " "), (" ", "a")), logp(("c", " "), (" ", "b")), logp(("a", " "), (" ", "b"), ("b", "b"))]
    assert result["acc,none"] == pytest.approx(1 / 3)
    assert result["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / 3), rel=1e-5)


def test_rolling_loglikelihood_covers_every_token_once():
    lm = HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer(), max_length=3, batch_size=2)
    text = "ab cab ba"
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    chars = ["<eos>", *text]  # a bigram model: every window sees the previous character
    assert total == pytest.approx(logp(*zip(chars[:-1], chars[1:])), abs=1e-5)


def test_generate_until_is_greedy_and_stops():
    lm = HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer(), max_length=32)
    requests = [Instance("generate_until", {}, ("c", {"until": ["b"], "max_gen_toks": 5}), 0),
                Instance("generate_until", {}, ("c", {"until": ["a a"], "max_gen_toks": 10}), 0)]
    # greedy chain: c -> " ", " " -> "a", "a" -> " ", ...
    assert lm.generate_until(requests, disable_tqdm=True) == [" a a ", " "]


def test_registered_name_loads_a_run_directory(tmp_path, task_dir):
    model, tok = tiny_hybrid(gpt2().vocab_size, seed=5), gpt2()
    run = write_run_dir(tmp_path / "run", model, tok)
    result = lm_eval.simple_evaluate(
        model="hybridlm", model_args=f"run={run},checkpoint=best,device=cpu,batch_size=8,max_length=96",
        tasks=["local_arc_challenge"], limit=8, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
    ours = evaluate(model, tok, "arc_challenge", data_dir="builtin-subsets", limit=8, max_length=96, use_hub=False)
    assert result["results"]["local_arc_challenge"]["acc_norm,none"] == pytest.approx(
        ours["tasks"]["arc_challenge"]["metrics"]["acc_norm"])


def test_lm_eval_command_line_knows_model_hybridlm(tmp_path, task_dir, monkeypatch, capsys):
    from hybridlm.evaluation.lm_eval_cli import main

    tok = gpt2()
    run = write_run_dir(tmp_path / "run", tiny_hybrid(tok.vocab_size, seed=6), tok)
    monkeypatch.setattr("sys.argv", ["lm_eval"])  # main() replaces it; monkeypatch restores it
    assert main(["--model", "hybridlm", "--model_args", f"run={run},checkpoint=best,device=cpu,batch_size=8",
                 "--tasks", "local_arc_challenge", "--include_path", str(task_dir), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "local_arc_challenge" in out and "acc_norm" in out and "'batch_size': 8" in out


def test_same_loglikelihoods_as_lm_evals_hflm():
    """lm-eval's own Hugging Face scorer (HFLM) on the same weights: needs `accelerate` (lm-eval[hf])."""
    pytest.importorskip("accelerate")
    from lm_eval.models.huggingface import HFLM
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast
    from transformers.modeling_outputs import CausalLMOutput

    tok = gpt2()
    model = tiny_hybrid(tok.vocab_size, seed=7)

    class Config(PretrainedConfig):
        model_type = "hybridlm_test_wrapper"

    class Wrapped(PreTrainedModel):
        config_class = Config

        def __init__(self, config, inner):
            super().__init__(config)
            self.inner = inner

        def forward(self, input_ids, **kwargs):
            return CausalLMOutput(logits=self.inner(input_ids).logits)

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token="<|endoftext|>")
    hflm = HFLM(pretrained=Wrapped(Config(), model).eval(), tokenizer=hf_tokenizer, batch_size=3, max_length=24)
    ours = HybridLMEvalModel(model=model, tokenizer=tok, batch_size=5, max_length=24)
    pairs = [("The cat sat on the", " mat"), ("", "Hello there"), ("Question: what? \nAnswer: ", "yes it is"),
             ("a " * 40, " end of it"), ("x", "<|endoftext|> y"), ("Hello   ", "  world")]
    requests = [Instance("loglikelihood", {}, pair, 0) for pair in pairs]
    for (a, greedy_a), (b, greedy_b) in zip(hflm.loglikelihood(requests), ours.loglikelihood(requests)):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    rolling = [Instance("loglikelihood_rolling", {}, ("word " * 60,), 0)]
    assert hflm.loglikelihood_rolling(rolling) == pytest.approx(ours.loglikelihood_rolling(rolling), rel=1e-5)


def test_bridge_precision_is_resolved_and_checked_at_construction():
    from hybridlm.errors import HybridLMError

    assert HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer()).precision == "fp32"  # auto on CPU
    assert HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer(), precision="bf16").precision == "bf16"
    with pytest.raises(HybridLMError, match="precision must be one of"):
        HybridLMEvalModel(model=TableLM(), tokenizer=CharTokenizer(), precision="fp16")
