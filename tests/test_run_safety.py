"""Runs that never lie and never lose work: each test reproduces one way a run used to be lost or
mixed (resume ignoring --set, --out wiping a run, two writers, code from a run directory, names
leaving runs/, signals, NaNs) and asserts what happens now."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hybridlm.cli import main
from hybridlm.config import resolve
from hybridlm.errors import ConfigError, NonFiniteError, RunLockedError, TrainingInterrupted
from hybridlm.runs import RunDir, load_run
from hybridlm.runs import checkpoint as ckpt
from hybridlm.runs import integrity
from hybridlm.runs.writer import RunLock
from hybridlm.train import train
from hybridlm.train.nonfinite import NonFiniteGuard
from hybridlm.train.trainer import Trainer

SRC = str(Path(__file__).resolve().parents[1] / "src")


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
            and p.name != ".lock"}


def tiny(**train):
    return resolve(preset="tiny", values={f"train.{k}": v for k, v in train.items()})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 0
    return out


# 1. resume is the run's own config -------------------------------------------------------------
def test_resume_with_a_changed_setting_is_refused_and_touches_nothing(finished, capsys):
    before = snapshot(finished)
    for flags, key in ((["--set", "train.lr=1e-4"], "train.lr"), (["--set", "train.max_steps=30"], "train.max_steps"),
                       (["--preset", "tiny"], "--preset")):
        assert main(["train", "--resume", str(finished), *flags]) == 2
        err = capsys.readouterr().err
        assert key in err and len(err.strip().splitlines()) == 1
    assert snapshot(finished) == before


def test_resume_of_a_finished_run_has_nothing_to_train(finished, capsys):
    before = snapshot(finished)
    assert main(["train", "--resume", str(finished)]) == 0
    assert "nothing left to train" in capsys.readouterr().out
    # a setting that does not change the experiment is accepted, and still nothing is rewritten
    assert main(["train", "--resume", str(finished), "--set", "train.log_interval=7"]) == 0
    # the saved config itself, given back as --config, is not a change
    assert main(["train", "--resume", str(finished), "--config", str(finished / "config.toml")]) == 0
    assert snapshot(finished) == before


def test_python_resume_refuses_a_changed_config(finished):
    changed = resolve(file=finished / "config.toml", values={"train.lr": 1e-4})
    with pytest.raises(ConfigError, match="train.lr"):
        train(changed, resume=finished, progress=False)


def test_a_resolved_config_is_read_only():
    config = resolve(preset="tiny")
    with pytest.raises(ConfigError, match="read-only"):
        config.train.lr = 1.0
    assert resolve(base=config, values={"train.lr": 1.0}).train.lr == 1.0 and config.train.lr == 3e-3
    writable = config.copy()
    writable.train.lr = 2.0  # a copy is the user's to change
    assert writable.train.lr == 2.0


# 2. an existing run is never overwritten by accident --------------------------------------------
def test_out_on_an_existing_run_is_refused_then_overwrite_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny(max_steps=40, save_interval=10, keep_checkpoints=5), out=out, progress=False)
    before = snapshot(out)
    assert main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=20"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run (40 steps, val loss" in err and "--overwrite" in err
    assert snapshot(out) == before
    assert main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.max_steps=20",
                 "--set", "train.save_interval=10", "--overwrite", "--no-progress"]) == 0
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best", "final", "step_000010"]  # nothing left of the 40-step run
    assert max(e["step"] for e in RunDir(out).read_metrics()) == 20
    assert json.loads((out / "results.json").read_text())["results"]["steps"] == 20


def _start_training(out: Path, steps: int) -> subprocess.Popen:
    """`hybridlm train` of the tiny preset in a child process, returned once it has logged a step."""
    proc = subprocess.Popen([sys.executable, "-m", "hybridlm.cli", "train", "--preset", "tiny", "--out", str(out),
                             "--set", f"train.max_steps={steps}", "--no-progress"], env={**os.environ, "PYTHONPATH": SRC},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc


# 3. one writer per run directory -----------------------------------------------------------------
def test_a_second_writer_fails_at_once(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        started = time.perf_counter()
        assert main(["train", "--preset", "tiny", "--out", str(out)]) == 2
        assert time.perf_counter() - started < 5
        assert "is being written by pid" in capsys.readouterr().err
        with pytest.raises(RunLockedError):
            train(tiny(), out=out, progress=False)
    assert not (out / "config.toml").exists()


def test_concurrent_training_processes_on_one_directory(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC}
    first = _start_training(out, steps=400)  # long enough to still run when the second one starts
    try:
        second = subprocess.run([sys.executable, "-m", "hybridlm.cli", "train", "--preset", "tiny", "--out",
                                 str(out), "--overwrite"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and "is being written by" in second.stderr
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        if first.poll() is None:  # a failed assertion must not leave the trainer running
            first.kill()
    events = [(e["event"], e["step"]) for e in RunDir(out).read_metrics()]
    assert len(events) == len(set(events)) and max(s for _, s in events) == 400


# 4. a run directory never runs code --------------------------------------------------------------
def test_a_saved_fla_path_is_never_imported(tmp_path):
    out = tmp_path / "run"
    train(tiny(max_steps=4, eval_interval=4), out=out, progress=False)
    clone = out / "clone"
    (clone / "fla").mkdir(parents=True)
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'a').write(__name__ + '\\n')\n"
    (clone / "fla" / "__init__.py").write_text(payload)
    (clone / "matplotlib.py").write_text(payload)
    config = (out / "config.toml").read_text().replace('path = "none"', f'path = "{clone}"')
    assert f'path = "{clone}"' in config
    (out / "config.toml").write_text(config)
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("HYBRIDLM_FLA_PATH", None)
    done = subprocess.run([sys.executable, "-m", "hybridlm.cli", "train", "--resume", str(out), "--extend-steps", "6",
                           "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not marker.exists()
    assert "not activated" in done.stderr
    assert f'path = "{clone}"' not in (out / "config.toml").read_text()  # the record says what was used


# 5. run names are names --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../x", "/abs/path", "a/b", "..", "a\\b"])
def test_run_names_cannot_leave_the_runs_root(name, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "c.toml"
    file.write_text(f"[run]\nname = {json.dumps(name)}\n")
    assert main(["train", "--preset", "tiny", "--config", str(file)]) == 2
    assert "run.name" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [file]


# 6. signals --------------------------------------------------------------------------------------
def _weights(path):
    model, _ = load_run(path, checkpoint="final")
    return model.state_dict()


def _train_losses(path):
    return [(e["step"], e["loss"]) for e in RunDir(path).read_metrics() if e["event"] == "train"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "run"
    train(tiny(max_steps=30, log_interval=4, eval_interval=10, save_interval=10), out=out, progress=False)
    return out


def _interrupt(monkeypatch, owner, name, when, signum, times=1):
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if when(calls["n"], *args):
            for _ in range(times):
                os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


MOMENTS = {
    # mid-step, at a step that is not a log, eval or save step
    "step": (Trainer, "_step", lambda n, self: self.state.step == 13),
    # during the evaluation at step 20
    "eval": (Trainer, "evaluate", lambda n, self: self.state.step == 20),
    # during the periodic save at step 10
    "save": (ckpt, "save_checkpoint", lambda n, path, *a: path.name == "step_000010"),
}


@pytest.mark.parametrize("moment", sorted(MOMENTS))
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_any_moment_resumes_bit_identically(moment, signum, straight, tmp_path, monkeypatch):
    owner, name, when = MOMENTS[moment]
    _interrupt(monkeypatch, owner, name, when, signum, times=2 if signum == signal.SIGINT else 1)
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted) as stopped:
        train(tiny(max_steps=30, log_interval=4, eval_interval=10, save_interval=10), out=out, progress=False)
    monkeypatch.undo()
    assert stopped.value.exit_code == (143 if signum == signal.SIGTERM else 130)
    expected_step = {"step": 14, "eval": 20, "save": 10}[moment]
    assert f"at step {expected_step}" in str(stopped.value)
    train(resume=out, progress=False)
    assert _train_losses(out) == _train_losses(straight)
    evals = [(e["step"], e["val_loss"]) for e in RunDir(out).read_metrics() if e["event"] == "eval"]
    assert evals == [(e["step"], e["val_loss"]) for e in RunDir(straight).read_metrics() if e["event"] == "eval"]
    a, b = _weights(straight), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_to_the_cli_process_saves_and_exits_143(tmp_path):
    out = tmp_path / "run"
    proc = _start_training(out, steps=100000)
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().strip().splitlines()
    assert err[-1].startswith("interrupted by SIGTERM at step ") and "Traceback" not in "\n".join(err)
    step = int(err[-1].split("at step ")[1].split(";")[0])
    assert (out / "checkpoints" / f"step_{step:06d}").is_dir()
    assert RunDir(out).latest_resumable().name == f"step_{step:06d}"


# 7. the non-finite guard -------------------------------------------------------------------------
def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--set", "train.lr=100", "--set",
                 "train.save_interval=2", "--set", "train.log_interval=1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "non-finite at step" in err and "newest good checkpoint is" in err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "final" not in names and names, names
    for path in (out / "checkpoints").iterdir():  # every checkpoint that was written is finite
        state = ckpt.read_trainer_state(path)
        model, _ = load_run(out, checkpoint=path.name)
        assert all(torch.isfinite(t).all() for t in model.state_dict().values()), (path, state["step"])
    bad_step = int(err.split("non-finite at step ")[1].split(";")[0])
    latest = RunDir(out).latest_resumable()
    assert ckpt.read_trainer_state(latest)["step"] < bad_step
    # it resumes from there (with updates that turn non-finite dropped)
    code = main(["train", "--resume", str(out), "--set", "train.nan_policy=skip", "--no-progress"])
    assert code in (0, 2)
    assert f"resumed from {latest}" in capsys.readouterr().out


def test_lr_1e3_stops_at_once_with_one_line(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--set", "train.lr=1e3",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite at step" in err[0] and "No checkpoint was saved before it" in err[0]
    bad_step = int(err[0].split("non-finite at step ")[1].split(";")[0])
    assert bad_step <= 5  # found at the first log interval (5 steps), not after all 60
    assert all(e["step"] <= 5 for e in RunDir(tmp_path / "r").read_metrics())
    assert not any((tmp_path / "r" / "checkpoints").iterdir())


@pytest.mark.parametrize("fused", [False, True])
def test_skip_drops_the_whole_update(fused):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([w], lr=0.1, fused=fused)
    guard = NonFiniteGuard("skip", max_skips=2, device=torch.device("cpu"))
    w.grad = torch.ones(4)
    guard.step_optimizer(opt, guard.finite(torch.tensor(1.0), torch.tensor(1.0)))
    before = w.detach().clone(), {k: v.clone() for k, v in opt.state[w].items()}
    w.grad = torch.full((4,), float("nan"))
    finite = guard.finite(torch.tensor(1.0), torch.tensor(float("nan")))
    guard.step_optimizer(opt, finite)
    guard.record(2, finite)
    assert torch.equal(w.detach(), before[0])
    assert all(torch.equal(opt.state[w][k], before[1][k]) for k in before[1])  # moments and step untouched
    assert guard.check(lambda: "") == 1
    guard.record(3, finite)
    with pytest.raises(NonFiniteError, match="2 updates in a row"):
        guard.check(lambda: "no checkpoint")


def test_skip_policy_counts_skipped_updates_in_the_metrics(tmp_path):
    out = tmp_path / "run"
    original = Trainer._step

    def poison_step_3(self):
        if self.state.step == 2:  # step 3's loss (and so its gradients) become NaN
            forward = self.forward
            self.forward = lambda inputs, labels: forward(inputs, labels) * float("nan")
            try:
                return original(self)
            finally:
                self.forward = forward
        return original(self)

    Trainer._step = poison_step_3
    try:
        results = train(tiny(max_steps=8, log_interval=4, eval_interval=8, nan_policy="skip"), out=out,
                        progress=False)
    finally:
        Trainer._step = original
    logs = [e for e in RunDir(out).read_metrics() if e["event"] == "train"]
    assert [e["skipped_updates"] for e in logs] == [1, 1]
    assert results["results"]["steps"] == 8


# 8. corrupt inputs: one line naming the file, before any training ------------------------------
@pytest.fixture()
def run_copy(finished, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    return copy


def _one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


def test_garbage_results_json_stops_extend_before_it_trains(run_copy, capsys):
    (run_copy / "results.json").write_text("{not json")
    metrics = (run_copy / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run_copy), "--extend-steps", "80", "--no-progress"]) == 2
    assert "results.json" in _one_line(capsys)
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics


def test_empty_config_blames_the_config_not_the_weights(run_copy, capsys):
    (run_copy / "config.toml").write_text("")
    assert main(["train", "--resume", str(run_copy), "--extend-steps", "80"]) == 2
    line = _one_line(capsys)
    assert "config.toml is empty or incomplete" in line and "model.safetensors" not in line


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(run_copy, capsys):
    optimizer = run_copy / "checkpoints" / "final" / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:1000])  # truncated
    assert main(["train", "--resume", str(run_copy), "--extend-steps", "70", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "checkpoints/final is unusable (optimizer.safetensors is truncated" in out.err
    assert "resuming from" in out.err and "step_000040" in out.err
    assert "at step 40" in out.out


def test_a_bit_flip_in_tensor_data_is_caught(run_copy, capsys):
    weights = run_copy / "checkpoints" / "final" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0x10  # inside the last tensor's data, not the header
    weights.write_bytes(bytes(data))
    assert main(["generate", "--run", str(run_copy), "--checkpoint", "final", "--max-new-tokens", "3"]) == 2
    line = _one_line(capsys)
    assert "final/model.safetensors is corrupt (checksum mismatch)" in line


def test_eval_export_generate_refuse_non_finite_weights(run_copy, capsys):
    from safetensors.torch import load_file, save_file

    final = run_copy / "checkpoints" / "final"
    tensors = load_file(str(final / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(final / "model.safetensors"), metadata={"format": "pt"})
    (final / "manifest.json").unlink()  # as written before manifests existed: accepted unverified
    for argv in (["generate", "--run", str(run_copy), "--checkpoint", "final", "--max-new-tokens", "3"],
                 ["export", "--run", str(run_copy), "--checkpoint", "final", "--out", str(run_copy / "x")],
                 ["eval", "--run", str(run_copy), "--checkpoint", "final", "--tasks", "val_ppl"]):
        assert main(argv) == 2, argv
        assert "non-finite" in _one_line(capsys), argv
    assert not (run_copy / "x").exists()


def test_a_full_disk_is_one_line_and_keeps_earlier_checkpoints(tmp_path, capsys, monkeypatch):
    import errno

    out = tmp_path / "run"
    original = integrity._write_bytes

    def full_disk(file, chunks, *args):
        if file.parent.name == ".tmp-step_000040":
            with open(file, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(file, chunks, *args)

    monkeypatch.setattr(integrity, "_write_bytes", full_disk)
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress"]) == 2
    line = _one_line(capsys)
    assert "No space left on device" in line and "step_000040" in line
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best", "step_000020"]  # no temporary directory left, the earlier checkpoint intact
    ckpt.verify_checkpoint(out / "checkpoints" / "step_000020")
    monkeypatch.undo()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0


def test_a_run_killed_before_its_results_were_written_gets_them_on_resume(run_copy, capsys):
    (run_copy / "results.json").unlink()  # as a SIGKILL right after the final checkpoint leaves it
    metrics = (run_copy / "metrics.jsonl").read_bytes()
    assert main(["train", "--resume", str(run_copy), "--no-progress"]) == 0
    assert "nothing left to train" not in capsys.readouterr().out
    assert json.loads((run_copy / "results.json").read_text())["results"]["steps"] == 60
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics  # no step trained, no event repeated
    assert main(["train", "--resume", str(run_copy)]) == 0
    assert "nothing left to train" in capsys.readouterr().out
