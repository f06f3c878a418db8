"""Training end to end on the tiny preset: CLI, run directory, resume, extend, errors."""

import json
import math
import os
import signal

import numpy as np
import pytest
import torch

from hybridlm.cli import main
from hybridlm.config import preset
from hybridlm.errors import TrainingInterrupted
from hybridlm.runs import RunDir, load_run
from hybridlm.train import train
from hybridlm.train.trainer import Trainer


def tiny(**train_overrides):
    config = preset("tiny")
    for key, value in train_overrides.items():
        setattr(config.train, key, value)
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One finished 60-step tiny run through the CLI, shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


def test_cli_run_directory_contents(tiny_run):
    run = RunDir(tiny_run)
    results = json.loads(run.results_file.read_text())
    for key in ("experiment", "config", "model", "results", "environment", "hybridlm_commit"):
        assert key in results
    for key in ("params_total", "params_non_embedding", "layer_types", "attention_layers", "attention_fraction"):
        assert key in results["model"]
    for key in ("best_val_loss", "final_val_loss", "final_val_accuracy", "final_val_perplexity", "total_time_s",
                "tokens_processed", "tokens_per_s", "mfu"):
        assert key in results["results"]
    assert results["model"]["layer_types"] == ["gdn", "attention"]
    assert results["results"]["steps"] == 60
    assert results["results"]["tokens_processed"] == 60 * 8 * 64
    # the steady rate is the median of the logged intervals after the first (which holds compilation)
    metrics = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    rates = sorted([m["tokens_per_s"] for m in metrics if m["event"] == "train"][1:])
    assert len(rates) >= 2 and results["results"]["tokens_per_s_steady"] == rates[len(rates) // 2]
    assert results["environment"]["kernel_backend"] == "torch"
    assert results["environment"]["fla"]["source"] in ("pip", "none", "local_clone")
    assert run.curves_file.stat().st_size > 10_000
    assert (run.checkpoint("best") / "model.safetensors").is_file()
    assert (run.checkpoint("final") / "optimizer.safetensors").is_file()
    assert (run.tokenizer_dir).is_dir() and run.config_file.is_file()
    events = run.read_metrics()
    assert [e["step"] for e in events if e["event"] == "eval"] == [20, 40, 60]
    assert not any(p.name.startswith(".tmp") for p in run.checkpoints.iterdir())


def test_loss_falls_below_unigram_entropy(tiny_run):
    """The model must learn more than token frequencies: val loss < unigram entropy of the corpus."""
    from hybridlm.data import prepare_data

    config = preset("tiny")
    data = prepare_data(config.data, progress=False)
    counts = np.bincount(np.asarray(data.train_tokens), minlength=data.tokenizer.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    results = json.loads(RunDir(tiny_run).results_file.read_text())
    first_train_loss = next(e["loss"] for e in RunDir(tiny_run).read_metrics() if e["event"] == "train")
    assert results["results"]["best_val_loss"] < unigram_entropy < first_train_loss


def test_generate_cli_and_load_run(tiny_run, capsys):
    assert main(["generate", "--run", str(tiny_run), "--prompt", "KING", "--max-new-tokens", "12",
                 "--seed", "1", "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("KING") and len(first) > len("KING\n")
    main(["generate", "--run", str(tiny_run), "--prompt", "KING", "--max-new-tokens", "12", "--seed", "1",
          "--device", "cpu"])
    assert capsys.readouterr().out == first  # seeded
    model, tokenizer = load_run(tiny_run, checkpoint="final")
    assert not model.training and tokenizer.vocab_size == model.config.vocab_size


def test_resume_is_bit_identical_to_uninterrupted(tmp_path, monkeypatch):
    config = tiny(max_steps=40, log_interval=1, eval_interval=10, save_interval=100)
    straight = train(config, out=tmp_path / "straight", progress=False)

    original = Trainer._step

    def interrupt_at_20(self):
        if self.state.step == 20:  # Ctrl-C in the middle of step 21: that step finishes, then it saves
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "_step", interrupt_at_20)
    with pytest.raises(TrainingInterrupted) as stopped:
        train(config, out=tmp_path / "interrupted", progress=False)
    assert stopped.value.exit_code == 130 and "at step 21" in str(stopped.value)
    monkeypatch.setattr(Trainer, "_step", original)
    assert (tmp_path / "interrupted" / "checkpoints" / "step_000021").is_dir()
    resumed = train(resume=tmp_path / "interrupted", progress=False)

    def losses(path):
        return [(e["step"], e["loss"]) for e in RunDir(path).read_metrics() if e["event"] == "train"]

    assert losses(tmp_path / "straight") == losses(tmp_path / "interrupted")
    assert len(losses(tmp_path / "straight")) == 40
    assert resumed["results"]["final_val_loss"] == straight["results"]["final_val_loss"]
    a, _ = load_run(tmp_path / "straight", checkpoint="final")
    b, _ = load_run(tmp_path / "interrupted", checkpoint="final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_extend_continues_on_fresh_data_with_new_schedule(tmp_path):
    config = tiny(max_steps=20, log_interval=1, eval_interval=10)
    train(config, out=tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    before = json.loads((run.checkpoint("final") / "trainer_state.json").read_text())["sampler"]
    results = train(resume=tmp_path / "run", extend_steps=30, progress=False)
    after = json.loads((run.checkpoint("final") / "trainer_state.json").read_text())["sampler"]
    assert results["results"]["steps"] == 30
    steps = [e["step"] for e in run.read_metrics() if e["event"] == "train"]
    assert steps == list(range(1, 31))
    assert after != before  # the sampler moved on: new windows, not a replay
    lr_21 = next(e["lr"] for e in run.read_metrics() if e["event"] == "train" and e["step"] == 21)
    from hybridlm.train.schedule import lr_at

    assert lr_21 == pytest.approx(lr_at(20, config.train.lr, config.train.warmup_steps, 30, "linear", 0.1))
    with pytest.raises(Exception, match="must exceed"):
        train(resume=tmp_path / "run", extend_steps=10, progress=False)


def test_user_errors_before_training(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--preset", "tiny", "--out", str(blocker / "run"), "--no-progress"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err

    assert main(["train", "--preset", "tiny", "--set", "train.lr=abc", "--no-progress"]) == 2
    assert "train.lr must be a number" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    train(tiny(max_steps=5, eval_interval=5, save_interval=5), out=tmp_path / "run", progress=False)
    weights = tmp_path / "run" / "checkpoints" / "final" / "model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    assert main(["train", "--resume", str(tmp_path / "run"), "--extend-steps", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1
    (tmp_path / "run" / "checkpoints" / "final" / "trainer_state.json").write_text("{broken")
    assert main(["generate", "--run", str(tmp_path / "run"), "--checkpoint", "missing"]) == 2
    assert "not found" in capsys.readouterr().err


def test_presets_info_doctor_commands(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("tiny", "cpu_demo", "h100_hybrid_sparse", "h100_transformer", "hybrid_late_8l", "rtx4090_hybrid"):
        assert f"| {name} " in out
    assert main(["info", "--preset", "h100_hybrid_sparse"]) == 0
    out = capsys.readouterr().out
    assert "GGGGGAGGGGGA" in out and "FLOPs per token" in out and "  5 A  attention" in out
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "kernels (auto)" in out and "fla" in out


def test_schedule_shape():
    from hybridlm.train.schedule import lr_at

    lrs = [lr_at(s, 1.0, 10, 100, "linear", 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1 + 0.9 / 90) and min(lrs[10:]) >= 0.1
    cos = [lr_at(s, 1.0, 0, 100, "cosine", 0.0) for s in (0, 50, 100)]
    assert cos == pytest.approx([1.0, 0.5, 0.0])
    assert math.isclose(lr_at(5, 2.0, 0, 10, "constant"), 2.0)


def test_no_weight_decay_groups():
    from hybridlm.model import HybridLM
    from hybridlm.train.optim import build_optimizer

    model = HybridLM(preset("tiny").model)
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cpu")
    decay, plain = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    assert any(n.endswith("A_log") for n in plain_names) and any(n.endswith("dt_bias") for n in plain_names)
    assert "model.embeddings.weight" in plain_names and "model.norm.weight" in plain_names
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1


def test_interrupted_checkpoint_swap_is_recovered(tmp_path):
    """A crash between the two renames of a checkpoint swap leaves `.old-final`; it is found again."""
    train(tiny(max_steps=4, eval_interval=4, save_interval=4), out=tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    run.checkpoint("final").rename(run.checkpoints / ".old-final")
    assert run.latest_resumable() == run.checkpoint("final")
    assert (run.checkpoint("final") / "model.safetensors").is_file()


def test_generation_builds_no_autograd_graph():
    from hybridlm.model import HybridLM
    from hybridlm.model.generation import generate_tokens

    model = HybridLM(preset("tiny").model)
    tokens = list(generate_tokens(model, torch.tensor([[1, 2, 3]]), 3, temperature=0))
    assert all(not t.requires_grad for t in tokens)
    assert torch.is_grad_enabled()


def test_parallel_modes():
    from hybridlm.errors import ConfigError
    from hybridlm.train.parallel import parallel_mode

    assert parallel_mode("auto", 1) == "none" and parallel_mode("auto", 4) == "ddp"
    assert parallel_mode("ddp", 1) == "none"
    with pytest.raises(ConfigError, match="each rank would train its own copy"):
        parallel_mode("none", 2)
