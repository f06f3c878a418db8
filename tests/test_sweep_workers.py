"""Warm sweep workers (tiny preset on the CPU): members train one after another in one process, cost about
a second each beyond their training, equal a cold `hybridlm train` bit for bit, and a worker killed mid-member
fails only that member. Also the data a plan reads (unique tokens, epochs) and `--gpus-per-member`."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hybridlm.cli import main
from hybridlm.errors import ConfigError
from hybridlm.runs import RunDir
from hybridlm.sweep.devices import parse_devices
from hybridlm.sweep.plan import BaseOptions, build_arch_plan
from hybridlm.sweep.processes import TorchrunProcess, last_error

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = ["--preset", "tiny", "--set", "train.batch_size=4", "--set", "data.seq_len=32", "--set", "train.eval_batches=2",
         "--set", "train.warmup_steps=2", "--devices", "cpu", "--no-progress"]
FOUR = ["sweep", "arch", "--layouts", "GG,GA,AG,AA", "--steps", "20", *SMALL, "--member-checkpoints", "best"]
# the per-member overhead the issue asks for on a CPU, and a bound loose enough for a busy shared CI box
TARGET_OVERHEAD_S, BOUND_OVERHEAD_S = 1.0, 4.0


pytestmark = pytest.mark.usefixtures("one_thread_members")  # tests/conftest.py


@pytest.fixture(scope="module")
def four(tmp_path_factory, one_thread_members):
    out = tmp_path_factory.mktemp("warm") / "arch"
    assert main([*FOUR, "--out", str(out)]) == 0
    return out


def members_of(out: Path) -> dict:
    return {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}


def cli(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "hybridlm", *args], env=env, capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def test_one_warm_worker_trains_every_member_with_about_a_second_of_overhead(four):
    members = list(members_of(four).values())
    timing = [m["timing"] for m in members]
    assert all(m["status"] == "done" for m in members)
    assert len({t["pid"] for t in timing}) == 1  # one process trained all four, one after another
    assert [t["process"] for t in timing] == ["new worker"] + ["warm worker"] * 3
    assert all(t["worker_start_s"] == 0.0 for t in timing[1:])  # only the first waited for the imports
    for t in timing:
        assert t["wall_s"] == pytest.approx(t["worker_start_s"] + t["train_s"] + t["overhead_s"], abs=2e-3)
        assert t["train_s"] > 0
    overheads = [t["overhead_s"] for t in timing]
    print(f"\nper-member overhead on this CPU (target <= {TARGET_OVERHEAD_S} s): "
          + ", ".join(f"{o:.2f}s" for o in overheads) + f"; first member waited {timing[0]['worker_start_s']:.2f}s "
          "for the worker's imports")
    assert max(overheads) < BOUND_OVERHEAD_S
    summary = json.loads((four / "summary.json").read_text())
    assert summary["timing"]["members"] == 4 and summary["timing"]["max_overhead_s"] == max(overheads)
    md = (four / "summary.md").read_text()
    assert "## Time per member" in md and "| warm worker |" in md


def test_a_member_trained_warm_equals_a_cold_train_of_its_config(four, tmp_path):
    """The third member ran in a process that had trained two models before it: the same bits as a fresh
    `hybridlm train --config SWEEP/configs/NAME.toml`."""
    name = "tiny__AG"
    cold = tmp_path / "cold"
    done = cli("train", "--config", str(four / "configs" / f"{name}.toml"), "--out", str(cold), "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    # (tiny evaluates once, at its last step 20: the best weights are the final ones)
    warm_weights = load_file(str(four / name / "checkpoints" / "best" / "model.safetensors"))
    cold_weights = load_file(str(cold / "checkpoints" / "best" / "model.safetensors"))
    assert warm_weights.keys() == cold_weights.keys()
    assert all(torch.equal(warm_weights[k], cold_weights[k]) for k in warm_weights)
    losses = [[(e["event"], e["step"], e.get("loss"), e.get("val_loss")) for e in RunDir(d).read_metrics()]
              for d in (four / name, cold)]
    assert losses[0] == losses[1]
    assert RunDir(four / name).config_file.read_text() == RunDir(cold).config_file.read_text()


def test_finished_members_keep_only_their_best_weights(four):
    for name in members_of(four):
        assert sorted(p.name for p in (four / name / "checkpoints").iterdir()) == ["best"]


def test_a_worker_killed_mid_member_fails_that_member_and_a_new_worker_goes_on(tmp_path):
    out = tmp_path / "arch"
    command = [sys.executable, "-m", "hybridlm", "sweep", "arch", "--layouts", "GG,GA,AA", "--steps", "150", *SMALL,
               "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    victim, deadline = "tiny__GA", time.monotonic() + 240
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        member = members_of(out).get(victim) if (out / "sweep.json").exists() else None
        if member and member["status"] == "running" and member["pid"] and \
                any(e["event"] == "train" for e in RunDir(out / victim).read_metrics()):
            os.kill(member["pid"], signal.SIGKILL)  # what the out-of-memory killer does
            killed = member["pid"]
        time.sleep(0.02)
    assert proc.wait(timeout=300) == 1, proc.stderr.read()[-2000:]
    assert killed is not None
    members = members_of(out)
    assert members[victim]["status"] == "failed" and members[victim]["returncode"] == -signal.SIGKILL
    assert members[victim]["error"] == "killed by SIGKILL (out of memory?)"
    first, last = members["tiny__GG"], members["tiny__AA"]
    assert first["status"] == last["status"] == "done"
    assert first["timing"]["pid"] == killed and last["timing"]["pid"] != killed  # replaced
    assert last["timing"]["process"] == "new worker"
    assert json.loads((out / "summary.json").read_text())["counts"] == {"done": 2, "failed": 1, "other": 0}


def test_sigterm_to_the_sweep_alone_stops_every_running_member_at_a_checkpoint(tmp_path):
    """A scheduler's SIGTERM to the sweep process only (its workers never see it): the sweep passes an
    interrupt on to each busy worker, whose member saves a checkpoint; sweep.json says interrupted."""
    out = tmp_path / "arch"
    command = [sys.executable, "-m", "hybridlm", "sweep", "arch", "--layouts", "GG,GA", "--steps", "3000", *SMALL,
               "--devices", "cpu,cpu", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if all(RunDir(out / name).step_checkpoints() for name in ("tiny__GG", "tiny__GA")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=180) == 130
    assert "sweep interrupted: 0 of 2 members done" in proc.stderr.read()
    for name, member in members_of(out).items():
        assert member["status"] == "interrupted" and member["pid"] is None
        step = int(member["error"].split("interrupted at step ")[1])
        assert RunDir(out / name).latest_resumable().name == f"step_{step:06d}"  # saved where it stopped
        assert "interrupted by SIGINT" in (out / name / "train.log").read_text()


# ------------------------------------------------------------------ honest data
@pytest.fixture
def small_corpus(tmp_path):
    """About 3,400 training tokens: 40 steps x 4 x 32 read them 1.52 times."""
    rng = random.Random(0)
    words = "the king queen sword crown river stone light night day wind fire sea ship storm castle field horse"
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(" ".join(rng.choice(words.split()) for _ in range(12)) + "." for _ in range(300)))
    return ["--set", f'data.source="{path}"', "--set", "data.val_fraction=0.2"]


def test_a_plan_beyond_one_epoch_warns_everywhere(small_corpus, tmp_path, capsys):
    out = tmp_path / "arch"
    args = ["sweep", "arch", "--layouts", "GA", "--steps", "40", *SMALL, *small_corpus, "--out", str(out)]
    assert main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "WARNING: member tiny__GA read up to 1.52 epochs of data.source" in text
    assert "data: 3,361 unique training tokens; each member reads 1.52 epochs of them" in text
    assert " 1.52 |" in text and not out.exists()
    assert main(args) == 0
    assert "warning: member tiny__GA read up to 1.52 epochs" in capsys.readouterr().err
    member = members_of(out)["tiny__GA"]
    assert member["unique_tokens"] == 3361 and member["epochs"] == pytest.approx(40 * 4 / (3360 // 32), abs=1e-4)
    # the member's own results.json says how often it read its data
    data = RunDir(out / "tiny__GA").read_results()["data"]
    assert data["train_tokens"] == 3361 and data["epochs"] == pytest.approx(member["epochs"], abs=1e-4)
    md = (out / "summary.md").read_text()
    assert "Data: 3,361 unique training tokens; each member reads 1.52 epochs of them." in md
    assert "**Warning:** member tiny__GA read up to 1.52 epochs" in md
    assert json.loads((out / "summary.json").read_text())["members"][0]["epochs"] == pytest.approx(member["epochs"],
                                                                                                 abs=1e-4)


def test_a_plan_beyond_one_epoch_with_on_exhausted_stop_is_refused_before_anything_is_written(small_corpus, tmp_path,
                                                                                              capsys):
    out = tmp_path / "arch"
    args = ["sweep", "arch", "--layouts", "GA", "--steps", "40", *SMALL, *small_corpus,
            "--set", 'data.on_exhausted="stop"', "--out", str(out)]
    for extra in (["--dry-run"], []):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert 'member tiny__GA would read 1.52 epochs' in err and 'data.on_exhausted = "stop"' in err
        assert not (out / "sweep.json").exists() and not (out / "configs").exists()
    args[args.index("40")] = "20"  # within one epoch: fine
    assert main([*args, "--dry-run"]) == 0
    assert "0.76 epochs" in capsys.readouterr().out


# ------------------------------------------------------------- gpus per member
def test_gpus_per_member_groups_the_device_queue(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")  # unset, the cores are split between the processes
    slots = parse_devices("0,1,2,3", gpu_count=4, per_member=2, cpu_count=8)
    assert [(s.device, s.nproc, s.env["CUDA_VISIBLE_DEVICES"]) for s in slots] == [
        ("cuda:0,cuda:1", 2, "0,1"), ("cuda:2,cuda:3", 2, "2,3")]
    assert slots[0].env["OMP_NUM_THREADS"] == "2"  # 8 cores over 4 processes
    assert [s.device for s in parse_devices("auto", gpu_count=3, per_member=2)] == ["cuda:0,cuda:1"]
    cpu = parse_devices("cpu", gpu_count=0, per_member=2, cpu_count=4)
    assert [(s.device, s.nproc, s.env["OMP_NUM_THREADS"]) for s in cpu] == [("cpu", 2, "2")]
    with pytest.raises(ConfigError, match="needs a multiple of 2 GPUs"):
        parse_devices("0,1,2", gpu_count=3, per_member=2)
    with pytest.raises(ConfigError, match="names a GPU twice"):
        parse_devices("0,0", gpu_count=1, per_member=2)


def test_a_k_gpu_member_is_torchrun_over_its_devices(tmp_path):
    slot = parse_devices("0,1,2,3", gpu_count=4, per_member=2)[1]
    process = TorchrunProcess(slot, "/usr/bin/python3")
    args = ["train", "--config", "D/configs/m.toml", "--out", "D/m", "--no-progress"]
    assert process.command(args) == ["/usr/bin/python3", "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node=2", "-m", "hybridlm", *args]
    assert process.command(["eval", "--run", "D/m"]) == ["/usr/bin/python3", "-m", "hybridlm", "eval", "--run", "D/m"]
    log = tmp_path / "train.log"
    log.write_text("step 4: val loss 5.1\nrank 1: error: out of disk\nrank 0: error: out of disk\n")
    assert last_error(log) == "out of disk"


def test_the_plan_counts_every_process_of_a_member(tmp_path):
    from hybridlm.sweep.configs import merge_with_previous
    from hybridlm.sweep.state import write_sweep

    small = ["train.batch_size=4", "data.seq_len=32", "train.eval_batches=2"]
    plan = build_arch_plan(BaseOptions(out=tmp_path, preset="tiny", steps=8, overrides=small, nproc=2), "GA")
    assert plan.members[0].tokens == 8 * 4 * 32 * 2 and plan.conditions["token_budget"] == 8 * 4 * 32 * 2
    assert plan.members[0].nproc == 2 and plan.settings["gpus_per_member"] == 2
    write_sweep(plan)
    with pytest.raises(ConfigError, match=r"planned with other settings \(nproc: 2 -> 1\)"):
        merge_with_previous(build_arch_plan(BaseOptions(out=tmp_path, preset="tiny", steps=8, overrides=small), "GA"))


@pytest.mark.slow
def test_a_two_process_member_trains_under_torchrun(tmp_path):
    out = tmp_path / "arch"
    assert main(["sweep", "arch", "--layouts", "GA", "--steps", "6", *SMALL, "--gpus-per-member", "2",
                 "--out", str(out)]) == 0
    member = members_of(out)["tiny__GA"]
    assert member["status"] == "done" and member["timing"]["process"] == "torchrun" and member["nproc"] == 2
    results = RunDir(out / "tiny__GA").read_results()
    assert results["results"]["tokens_processed"] == 6 * 4 * 32 * 2 == member["tokens"]  # both ranks' batches
    assert "step 6: val loss" in (out / "tiny__GA" / "train.log").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"][-2:] != ["--gpus-per-member", "1"] and "--gpus-per-member" in summary["command"]
