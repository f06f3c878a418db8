"""`hybridlm eval` end to end on a run directory: eval.json, the table, val_ppl, merging, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_eval_helpers import gpt2, tiny_hybrid, write_run_dir

pytestmark = pytest.mark.usefixtures("single_torch_thread")

from hybridlm.cli import main
from hybridlm.evaluation import read_eval

SEQ_LEN = 32


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tok = gpt2()
    return write_run_dir(tmp_path_factory.mktemp("evalrun") / "run", tiny_hybrid(tok.vocab_size, seed=4), tok,
                         seq_len=SEQ_LEN)


def eval_cli(run_dir, *extra: str) -> int:
    return main(["eval", "--run", str(run_dir), "--data-dir", "builtin-subsets", "--no-hub", "--no-progress",
                 "--device", "cpu", *extra])


def test_eval_writes_eval_json_and_prints_a_table(run_dir, capsys):
    assert eval_cli(run_dir, "--tasks", "arc_challenge,lambada,val_ppl", "--limit", "6", "--batch-size", "4") == 0
    out = capsys.readouterr().out
    assert "arc_challenge" in out and "acc_norm" in out and "perplexity" in out and "eval.json" in out
    data = json.loads((run_dir / "eval.json").read_text())
    assert data["format"] == 1 and data["hybridlm_version"] and data["updated"]
    arc = data["tasks"]["arc_challenge"]
    assert set(arc["metrics"]) == {"acc", "acc_norm"} and set(arc["stderr"]) == {"acc", "acc_norm"}
    assert arc["count"] == 6 and arc["split"] == "test" and arc["source"].startswith("file:")
    assert arc["stderr"]["acc"] is None or arc["stderr"]["acc"] >= 0
    settings = arc["settings"]
    assert settings["checkpoint"] == "best" and settings["limit"] == 6 and settings["num_fewshot"] == 0
    assert settings["batch_size"] == 4 and settings["device"] == "cpu" and settings["max_length"] == 2048
    assert settings["data_dir"] == "builtin-subsets" and settings["date"] and settings["hybridlm_version"]
    assert settings["precision"] == "fp32"  # auto on a CPU
    assert settings["checkpoint_step"] == 0 and settings["checkpoint_path"].endswith("checkpoints/best")
    assert 0 <= arc["metrics"]["acc"] <= 1
    lambada = data["tasks"]["lambada"]
    assert set(lambada["metrics"]) == {"acc", "perplexity"} and lambada["metrics"]["perplexity"] > 1
    assert "samples" not in arc


def test_val_ppl_is_the_perplexity_of_the_validation_windows(run_dir):
    from hybridlm.config import Config
    from hybridlm.data import prepare_data, validation_batches
    from hybridlm.runs import load_run

    assert eval_cli(run_dir, "--tasks", "val_ppl") == 0
    entry = json.loads((run_dir / "eval.json").read_text())["tasks"]["val_ppl"]
    data = prepare_data(Config.load(run_dir / "config.toml").data, progress=False)
    windows = (len(data.val_tokens) - 1) // SEQ_LEN
    (batch,) = validation_batches(data.val_tokens, windows, SEQ_LEN, num_batches=1)
    model, _ = load_run(run_dir)
    with torch.no_grad():
        loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
    assert entry["count"] == windows > 1 and entry["tokens"] == windows * SEQ_LEN
    assert entry["metrics"]["loss"] == pytest.approx(float(loss), rel=1e-5)
    assert entry["metrics"]["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)


def test_later_runs_merge_into_eval_json_and_read_eval_flattens(run_dir):
    assert eval_cli(run_dir, "--tasks", "arc_challenge", "--limit", "3") == 0
    assert eval_cli(run_dir, "--tasks", "hellaswag", "--limit", "3", "--checkpoint", "final") != 0  # no such checkpoint
    assert eval_cli(run_dir, "--tasks", "hellaswag", "--limit", "3") == 0
    data = json.loads((run_dir / "eval.json").read_text())
    assert {"arc_challenge", "hellaswag"} <= set(data["tasks"])
    assert data["tasks"]["arc_challenge"]["count"] == 3
    columns = read_eval(run_dir)
    assert columns["hellaswag/acc_norm"] == data["tasks"]["hellaswag"]["metrics"]["acc_norm"]
    assert "arc_challenge/acc" in columns and all(isinstance(v, float) for v in columns.values())


def test_read_eval_without_eval_json_is_none(tmp_path):
    assert read_eval(tmp_path) is None


def test_missing_dataset_is_one_line_on_stderr(run_dir, tmp_path, capsys):
    code = main(["eval", "--run", str(run_dir), "--tasks", "piqa", "--data-dir", str(tmp_path), "--no-hub"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path / "piqa_validation.jsonl.gz") in err


def test_unknown_task_is_refused_before_loading(run_dir, capsys):
    assert main(["eval", "--run", str(run_dir), "--tasks", "arc_challenge,mmlu"]) == 2
    assert "unknown eval task 'mmlu'" in capsys.readouterr().err
