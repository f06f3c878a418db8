"""Several processes training one model: torchrun with 2 gloo processes on the CPU, DDP, FSDP2 and HSDP,
against one process with the same global batch (float32; the CPU makes both deterministic); resume
across world sizes; a rank that fails; SIGTERM to the whole job.

Runs that several tests compare against are made once per module (`reference`)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from hybridlm.cli import main
from hybridlm.runs import RunDir
from hybridlm.runs.checkpoint import verify_checkpoint

pytestmark = pytest.mark.slow
SRC = str(Path(__file__).resolve().parents[1] / "src")
COMMON = ["--preset", "tiny", "--no-progress", "--set", "train.log_interval=2", "--set", "train.eval_interval=10",
          "--set", "train.save_interval=10"]
MODES = {"auto": (), "ddp": ("train.parallel=ddp",), "fsdp": ("train.parallel=fsdp",),
         "hsdp": ("train.parallel=fsdp", "train.fsdp.replicate=2")}  # HSDP: replicate 2 x shard 1


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, script: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    entry = [script] if script else ["-m", "hybridlm"]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *entry, *args], env=env(), capture_output=True, text=True, timeout=timeout)


def train_args(out: Path, batch: int, accum: int, sets=(), steps: int = 20) -> list[str]:
    return ["train", *COMMON, "--out", str(out), "--set", f"train.max_steps={steps}", "--set",
            f"train.batch_size={batch}", "--set", f"train.grad_accum={accum}", *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`reference(ranks, batch, accum, *sets)`: the directory (and stdout) of a 20-step run, made once."""
    root = tmp_path_factory.mktemp("reference")
    made: dict[tuple, tuple[Path, str]] = {}

    def run(ranks: int, batch: int, accum: int, *sets: str) -> tuple[Path, str]:
        key = (ranks, batch, accum, sets)
        if key not in made:
            out = root / f"run{len(made)}"
            if ranks == 1:
                assert main(train_args(out, batch, accum, sets)) == 0
                made[key] = (out, "")
            else:
                result = torchrun(*train_args(out, batch, accum, sets))
                assert result.returncode == 0, result.stderr[-3000:]
                made[key] = (out, result.stdout)
        return made[key]

    return run


def events(path: Path, kind: str, key: str):
    return [(e["step"], e[key]) for e in RunDir(path).read_metrics() if e["event"] == kind]


def assert_same_run(a: Path, b: Path, tol: float = 1e-5, evals: bool = True):
    for kind, key in (("train", "loss"), ("eval", "val_loss"))[:2 if evals else 1]:
        ea, eb = events(a, kind, key), events(b, kind, key)
        assert [s for s, _ in ea] == [s for s, _ in eb]
        assert all(abs(x - y) <= tol * abs(y) for (_, x), (_, y) in zip(ea, eb)), (kind, ea, eb)
    wa = load_file(str(a / "checkpoints" / "final" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "final" / "model.safetensors"))
    assert sorted(wa) == sorted(wb)  # the same file format whatever wrote it
    worst = max(((wa[k] - wb[k]).norm() / wb[k].norm().clamp(min=1e-12)).item() for k in wb)
    assert worst <= tol, worst


def final_state(path: Path) -> dict:
    return json.loads((path / "checkpoints" / "final" / "trainer_state.json").read_text())


@pytest.mark.parametrize("mode, ranks_accum, single, checkpointing", [
    ("auto", (4, 1), (8, 1), "none"),         # auto is DDP for a small model
    ("ddp", (2, 2), (2, 4), "full"),          # accumulation without all-reduce on all but the last micro-batch
    ("fsdp", (4, 1), (8, 1), "none"),
    ("fsdp", (2, 2), (2, 4), "selective"),
    ("hsdp", (4, 1), (8, 1), "none"),
])
def test_two_processes_equal_one_process_with_the_same_global_batch(mode, ranks_accum, single, checkpointing,
                                                                     reference):
    (batch, accum), (single_batch, single_accum) = ranks_accum, single
    sets = MODES[mode] + ((f"train.activation_checkpointing={checkpointing}",) if checkpointing != "none" else ())
    two, stdout = reference(2, batch, accum, *sets)
    one, _ = reference(1, single_batch, single_accum)
    assert stdout.count("final val loss") == 1  # one results table, from rank 0
    # the validation set is made of global micro-batches (batch_size x ranks rows): equal when those are
    assert_same_run(two, one, evals=batch * 2 == single_batch)
    results = json.loads((two / "results.json").read_text())
    assert results["results"]["tokens_processed"] == 20 * 8 * 64  # the global batch, counted once
    record = next(e for e in RunDir(two).read_metrics() if e["event"] == "train")
    assert record["tokens_per_s_per_process"] == pytest.approx(record["tokens_per_s"] / 2)
    environment = results["environment"]
    assert environment["parallel"] == ("ddp" if mode in ("auto", "ddp") else "fsdp")
    assert (environment["world_size"], environment["activation_checkpointing"]) == (2, checkpointing)


@pytest.mark.parametrize("mode, ranks", [("fsdp", 1), ("fsdp", 2), ("auto", 1)])  # auto: DDP
def test_a_two_process_run_resumes_exactly_on_one_or_two_processes(mode, ranks, reference, tmp_path, capfd):
    straight, _ = reference(2, 4, 1, *MODES[mode])
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    resume = ["train", "--resume", str(out / "checkpoints" / "step_000010"), "--no-progress"]
    if ranks == 1:
        assert main(resume) == 0
        assert "global batches of 8 windows: train.grad_accum 1 -> 2" in capfd.readouterr().err
    else:
        result = torchrun(*resume)
        assert result.returncode == 0, result.stderr[-3000:]
    # steps 11..20 (losses, evaluations, final weights) as if the run had never stopped
    assert_same_run(out, straight, tol=1e-6)
    state = final_state(out)
    assert state["global_batch"] == 8 and state["sampler"]["position"] == 20 * 8 and state["world_size"] == ranks
    config = (out / "config.toml").read_text()
    assert f"grad_accum = {2 if ranks == 1 else 1}\n" in config and "batch_size = 4\n" in config


def test_a_one_process_run_resumes_exactly_on_two_fsdp_processes(reference, tmp_path):
    straight, _ = reference(1, 8, 1)
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    result = torchrun("train", "--resume", str(out / "checkpoints" / "step_000010"), "--no-progress",
                      "--set", "train.parallel=fsdp")  # how the work is spread may change on resume
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train.batch_size 8 -> 4" in result.stderr  # 2 ranks x 4 rows keep the global batch of 8
    assert_same_run(out, straight, tol=1e-6)
    assert final_state(out)["sampler"]["position"] == 20 * 8


def test_a_resume_that_would_change_the_global_batch_is_refused(reference, tmp_path, capsys):
    straight, _ = reference(2, 4, 1, *MODES["fsdp"])
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    assert main(["train", "--resume", str(out), "--extend-steps", "30", "--no-progress",
                 "--set", "train.grad_accum=3"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size 4 x train.grad_accum 3 x 1 process = 12 windows per step, but this run trains on 8" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


FAULTY = """
import os, signal, sys
from hybridlm.cli import main
from hybridlm.train.trainer import Trainer

original = Trainer._step

def failing_step(self):
    if int(os.environ["RANK"]) == 1 and self.state.step == 12:
        if {fault!r} == "raise":
            raise RuntimeError("injected failure")
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self)

Trainer._step = failing_step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("fault", ["raise", "sigkill"])
def test_a_failing_rank_stops_the_job_and_leaves_the_checkpoints_intact(fault, reference, tmp_path):
    script = tmp_path / "faulty.py"
    script.write_text(FAULTY.format(fault=fault))
    out = tmp_path / "run"
    result = torchrun(*train_args(out, 4, 1, MODES["fsdp"]), script=str(script))
    assert result.returncode != 0
    # torchrun's summary names the rank that failed first
    summary = re.search(r"Root Cause.*\n(?:.*\n){0,4}?\s*rank\s*:\s*1 \(local_rank: 1\)", result.stderr)
    assert summary, result.stderr[-3000:]
    if fault == "raise":
        assert "[rank1]: RuntimeError: injected failure" in result.stderr
    else:
        assert "Signal 9 (SIGKILL)" in result.stderr
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best", "step_000010"], names  # nothing half-written, nothing from after the failure
    for name in names:
        verify_checkpoint(out / "checkpoints" / name)
    # and the run goes on from there, on one process, as if nothing had happened
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert_same_run(out, reference(2, 4, 1, *MODES["fsdp"])[0], tol=1e-6)


def test_sigterm_to_the_group_saves_one_checkpoint_and_resumes_exactly(tmp_path):
    sets = ["--set", "train.max_steps=120", "--set", "train.batch_size=4", "--set", "train.parallel=fsdp"]
    straight = torchrun("train", *COMMON, "--out", str(tmp_path / "straight"), *sets, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "hybridlm", "train", *COMMON, "--out", str(out), *sets], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            steps = [s for s, _ in events(out, "train", "loss")] if (out / "metrics.jsonl").exists() else []
            if steps and steps[-1] >= 30:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler does to the whole job
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
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
