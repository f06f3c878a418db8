"""Several processes training one model: torchrun with 2 gloo processes on the CPU, DDP, against one
process with the same global batch (float32; the CPU makes both deterministic)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hybridlm.cli import main
from hybridlm.runs import RunDir

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMON = ["--preset", "tiny", "--no-progress", "--set", "train.log_interval=2", "--set", "train.eval_interval=10",
          "--set", "train.save_interval=10"]


def torchrun(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "hybridlm", *args], env=env, capture_output=True, text=True, timeout=timeout, **popen)


def events(path: Path, kind: str, key: str):
    return [(e["step"], e[key]) for e in RunDir(path).read_metrics() if e["event"] == kind]


def assert_same_run(a: Path, b: Path, tol: float = 1e-5, evals: bool = True):
    for kind, key in (("train", "loss"), ("eval", "val_loss"))[:2 if evals else 1]:
        ea, eb = events(a, kind, key), events(b, kind, key)
        assert [s for s, _ in ea] == [s for s, _ in eb]
        assert all(abs(x - y) <= tol * abs(y) for (_, x), (_, y) in zip(ea, eb)), (kind, ea, eb)
    wa = load_file(str(a / "checkpoints" / "final" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "final" / "model.safetensors"))
    worst = max(((wa[k] - wb[k]).norm() / wb[k].norm().clamp(min=1e-12)).item() for k in wb)
    assert worst <= tol, worst


@pytest.mark.parametrize("ranks_accum, single", [((4, 1), (8, 1)), ((2, 2), (2, 4))])
def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(ranks_accum, single, tmp_path):
    (batch, accum), (single_batch, single_accum) = ranks_accum, single
    two = torchrun("train", *COMMON, "--out", str(tmp_path / "two"), "--set", "train.max_steps=20",
                   "--set", f"train.batch_size={batch}", "--set", f"train.grad_accum={accum}")
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("final val loss") == 1  # one results table, from rank 0
    assert main(["train", *COMMON, "--out", str(tmp_path / "one"), "--set", "train.max_steps=20",
                 "--set", f"train.batch_size={single_batch}", "--set", f"train.grad_accum={single_accum}"]) == 0
    # the validation set is made of global micro-batches (batch_size x ranks rows): equal when those are
    assert_same_run(tmp_path / "two", tmp_path / "one", evals=batch * 2 == single_batch)
    results = json.loads((tmp_path / "two" / "results.json").read_text())["results"]
    assert results["tokens_processed"] == 20 * 8 * 64  # the global batch, counted once


def test_sigterm_to_the_group_saves_one_checkpoint_and_resumes_exactly(tmp_path):
    straight = torchrun("train", *COMMON, "--out", str(tmp_path / "straight"), "--set", "train.max_steps=400",
                        "--set", "train.batch_size=4", timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "hybridlm", "train", *COMMON, "--out", str(out), "--set", "train.max_steps=400",
                             "--set", "train.batch_size=4"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [s for s, _ in events(out, "train", "loss")] if (out / "metrics.jsonl").exists() else []
        if steps and steps[-1] >= 30:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does to the whole job
    proc.wait(timeout=120)
    err = proc.stderr.read()
    assert "interrupted by SIGTERM at step" in err, err[-3000:]
    stopped = {int(line.split("at step ")[1].split(";")[0]) for line in err.splitlines()
               if "interrupted by SIGTERM at step" in line}
    assert len(stopped) == 1  # every rank stopped at the same step
    step = stopped.pop()
    assert RunDir(out).latest_resumable().name == f"step_{step:06d}"
    resumed = torchrun("train", "--resume", str(out), "--no-progress", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(out, tmp_path / "straight", tol=1e-6)


def test_a_two_process_run_resumes_on_one_process(tmp_path):
    out = tmp_path / "run"
    first = torchrun("train", *COMMON, "--out", str(out), "--set", "train.max_steps=10", "--set", "train.batch_size=4")
    assert first.returncode == 0, first.stderr[-3000:]
    assert main(["train", "--resume", str(out), "--extend-steps", "14", "--no-progress"]) == 0
    assert max(s for s, _ in events(out, "train", "loss")) == 14
    state = json.loads((out / "checkpoints" / "final" / "trainer_state.json").read_text())
    assert state["step"] == 14 and state["sampler"]["position"] == 10 * 8 + 4 * 4  # 2 ranks x 4, then 1 x 4


def test_an_error_before_training_stops_every_rank_with_one_message(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *COMMON, "--out", str(out), "--set", "train.max_steps=4"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    again = torchrun("train", *COMMON, "--out", str(out), "--set", "train.max_steps=4", timeout=120)
    assert again.returncode != 0
    assert "rank 0: error:" in again.stderr and "rank 1: error:" in again.stderr  # rank 0's refusal, on both
    assert "already holds a run" in again.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_train_nproc_wraps_torchrun(tmp_path, capfd):
    out = tmp_path / "run"
    assert main(["train", "--nproc", "2", *COMMON, "--out", str(out), "--set", "train.max_steps=4",
                 "--set", "train.batch_size=4"]) == 0
    assert capfd.readouterr().out.count("final val loss") == 1
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["steps"] == 4 and results["tokens_processed"] == 4 * 8 * 64  # 2 ranks x 4 rows
    assert main(["train", "--nproc", "2", *COMMON, "--out", str(out), "--set", "train.max_steps=4"]) != 0
