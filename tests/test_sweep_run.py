"""Sweeps that train (tiny preset, 16 steps): reports, reruns, kill + resume, failures, compare."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridlm.cli import main
from hybridlm.runs import RunDir

BUDGET = ["--preset", "tiny", "--steps", "16", "--set", "train.eval_interval=4", "--set", "train.batch_size=4",
          "--set", "data.seq_len=32", "--set", "train.eval_batches=2", "--set", "train.warmup_steps=2",
          "--set", "train.log_interval=2", "--devices", "cpu", "--no-progress"]
ARCH = ["sweep", "arch", "--layouts", "GG,GA,AA", *BUDGET]
MEMBERS = ["tiny__GG", "tiny__GA", "tiny__AA"]
MEMBER_FIELDS = ("rank", "name", "layout", "attention_pct", "lr", "params", "best_val_loss", "final_val_loss",
                 "final_val_accuracy", "final_val_perplexity", "train_time_s", "tokens", "tokens_per_s", "status",
                 "error")


pytestmark = pytest.mark.usefixtures("one_thread_members")  # tests/conftest.py


@pytest.fixture(scope="module")
def arch_sweep(tmp_path_factory, one_thread_members):
    out = tmp_path_factory.mktemp("sweeps") / "arch"
    assert main([*ARCH, "--out", str(out)]) == 0
    return out


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_arch_summary_ranks_by_best_val_loss_with_every_field(arch_sweep):
    summary = summary_of(arch_sweep)
    members = summary["members"]
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)
    for m in members:
        assert all(key in m for key in MEMBER_FIELDS)
        assert m["status"] == "done" and m["error"] is None and m["tokens"] == 16 * 4 * 32
        assert m["best_val_loss"] > 0 and m["final_val_perplexity"] > 1 and m["tokens_per_s"] > 0
    losses = [m["best_val_loss"] for m in members]
    assert losses == sorted(losses) and [m["rank"] for m in members] == [1, 2, 3]
    assert summary["best"] == members[0]["name"]
    by_name = {m["name"]: m for m in members}
    assert (by_name["tiny__GG"]["attention_pct"], by_name["tiny__AA"]["attention_pct"]) == (0.0, 100.0)
    assert by_name["tiny__GA"]["layout"] == "GA" and by_name["tiny__GA"]["lr"] == 3e-3
    # each member equals its own run: the numbers come from the member's results.json
    results = RunDir(arch_sweep / "tiny__GA").read_results()["results"]
    assert by_name["tiny__GA"]["best_val_loss"] == results["best_val_loss"]
    assert summary["conditions"]["token_budget"] == 16 * 4 * 32
    md = (arch_sweep / "summary.md").read_text()
    assert "## Ranking (by best validation loss)" in md and f"|    1 | {members[0]['name']} " in md


def test_arch_plots_are_png_files(arch_sweep):
    for name in ("val_loss_curves.png", "loss_vs_attention.png", "loss_vs_throughput.png"):
        data = (arch_sweep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert summary_of(arch_sweep)["plots"] == ["val_loss_curves.png", "loss_vs_attention.png",
                                                "loss_vs_throughput.png"]


def test_members_saved_periodic_checkpoints(arch_sweep):
    config = RunDir(arch_sweep / "tiny__GG").config_file.read_text()
    assert "save_interval = 4" in config
    sweep = json.loads((arch_sweep / "sweep.json").read_text())
    assert [m["attempts"] for m in sweep["members"]] == [1, 1, 1]
    assert all(m["status"] == "done" and m["wall_s"] > 0 for m in sweep["members"])


def test_rerun_trains_nothing(arch_sweep, capsys):
    mtimes = {name: (arch_sweep / name / "results.json").stat().st_mtime_ns for name in MEMBERS}
    before = json.loads((arch_sweep / "sweep.json").read_text())
    assert main([*ARCH, "--out", str(arch_sweep)]) == 0
    err = capsys.readouterr().err
    assert "3 finished (skipped), 0 to resume, 0 to train" in err and "nothing to train" in err
    assert {name: (arch_sweep / name / "results.json").stat().st_mtime_ns for name in MEMBERS} == mtimes
    after = json.loads((arch_sweep / "sweep.json").read_text())
    assert [m["attempts"] for m in after["members"]] == [m["attempts"] for m in before["members"]]
    assert [m["started"] for m in after["members"]] == [m["started"] for m in before["members"]]


def test_dry_run_of_a_finished_sweep_uses_measured_speed(arch_sweep, capsys):
    assert main([*ARCH, "--out", str(arch_sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("done (skip)") == 3 and "measured on finished members" in out and "~" not in out


def test_compare_reproduces_the_sweep_table(arch_sweep, tmp_path, capsys):
    assert main(["compare", str(arch_sweep), "--csv", str(tmp_path / "t.csv"), "--out", str(tmp_path / "plots")]) == 0
    table = capsys.readouterr().out.split("\nwrote")[0].strip()
    assert table.count("\n") == 1 + len(MEMBERS)
    assert table in (arch_sweep / "summary.md").read_text()
    rows = (tmp_path / "t.csv").read_text().splitlines()
    assert rows[0].startswith("rank,name,group,layout") and len(rows) == 1 + len(MEMBERS)
    assert rows[1].split(",")[1] == summary_of(arch_sweep)["best"]
    for name in ("val_loss_curves.png", "loss_vs_attention.png", "loss_vs_throughput.png", "comparison.md"):
        assert (tmp_path / "plots" / name).stat().st_size > 0


def test_killed_sweep_resumes_and_matches_the_uninterrupted_one(arch_sweep, tmp_path):
    """Two of the three layouts (a member's config does not depend on the others), killed mid-member."""
    out = tmp_path / "arch"
    names = MEMBERS[:2]
    command = [sys.executable, "-m", "hybridlm.cli", *ARCH, "--out", str(out)]
    command[command.index("GG,GA,AA")] = ",".join(n.split("__")[1] for n in names)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    victim = None
    deadline = time.monotonic() + 240
    while victim is None and time.monotonic() < deadline and proc.poll() is None:
        for name in names:
            run = RunDir(out / name)
            if run.step_checkpoints() and not run.results_file.exists():
                victim = name
                break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its member, at once, no chance to save
    proc.wait()
    log.close()
    assert victim is not None, (tmp_path / "first.log").read_text()[-2000:]
    assert not (out / victim / "results.json").exists()
    checkpoint_step = RunDir(out / victim).step_checkpoints()[-1][0]
    assert checkpoint_step in (4, 8, 12)
    stale = {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}
    assert stale[victim]["status"] == "running"

    second = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"[sweep] resume {victim} from step {checkpoint_step} on cpu" in second.stderr
    assert "resumed from" in second.stdout + second.stderr
    members = {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}
    assert members[victim]["resumed_from_step"] == checkpoint_step and members[victim]["attempts"] == 2
    resumed_events = [e["step"] for e in RunDir(out / victim).read_metrics() if e["event"] == "eval"]
    assert resumed_events == [4, 8, 12, 16]  # the metrics log has no duplicated or missing evals
    straight = {m["name"]: m for m in summary_of(arch_sweep)["members"]}
    again = summary_of(out)["members"]
    assert [m["name"] for m in again] == sorted(names, key=lambda n: straight[n]["best_val_loss"])
    for member in again:
        for key in ("best_val_loss", "best_step", "final_val_loss", "final_val_accuracy", "final_val_perplexity",
                    "tokens", "params"):
            assert member[key] == straight[member["name"]][key], (member["name"], key)


def test_failed_members_are_recorded_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "grid"
    args = ["sweep", "grid", "--set-grid", "model.attention_layers=[[0],[99]]",
            "--set-grid", 'model.kernels=["torch","fla"]', "--eval", "no_such_task", *BUDGET, "--out", str(out)]
    assert main(args) == 1  # some members failed
    members = {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}
    ok, crash = members["tiny__attention_layers=0__kernels=torch"], members["tiny__attention_layers=0__kernels=fla"]
    assert ok["status"] == "done" and ok["error"] is None
    # a member that crashes at run time (FLA kernels on a CPU) fails alone, with its error message
    assert crash["status"] == "failed" and "model.kernels = 'fla' cannot run" in crash["error"] and crash["returncode"] == 2
    # members whose config is invalid fail at plan time and never start
    for name in ("tiny__attention_layers=99__kernels=torch", "tiny__attention_layers=99__kernels=fla"):
        assert members[name]["status"] == "failed" and "index 99" in members[name]["error"]
        assert members[name]["attempts"] == 0 and not (out / name).exists()
    # an eval failure is recorded on the member but does not fail it
    assert ok["eval_status"] == "failed" and "no_such_task" in ok["eval_error"]
    summary = summary_of(out)
    assert summary["counts"] == {"done": 1, "failed": 3, "other": 0}
    assert summary["members"][0]["name"] == ok["name"] and summary["members"][0]["rank"] == 1
    md = (out / "summary.md").read_text()
    assert "## Failures" in md and "model.kernels = 'fla' cannot run" in md and "(eval): unknown eval task" in md

    # rerun: the finished member is skipped, the failed ones (and the failed eval) are tried again
    mtime = (out / ok["name"] / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 1
    again = {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}
    assert again[ok["name"]]["attempts"] == 1 and (out / ok["name"] / "results.json").stat().st_mtime_ns == mtime
    assert again[crash["name"]]["attempts"] == 2 and again[crash["name"]]["status"] == "failed"
    expected = "1 finished (skipped), 0 to resume, 1 to train, 2 with an invalid config, 1 to evaluate"
    assert expected in capsys.readouterr().err


def test_ctrl_c_marks_the_sweep_interrupted_and_says_so(tmp_path):
    """Ctrl-C reaches the sweep and its member (one process group): the member saves and exits 130, the
    sweep records it as interrupted (never "running"), prints one line on how to go on and exits 130."""
    out = tmp_path / "arch"
    command = [sys.executable, "-m", "hybridlm.cli", *ARCH, "--out", str(out)]
    command[command.index("GG,GA,AA")] = "GG"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if RunDir(out / MEMBERS[0]).step_checkpoints():
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=180) == 130
    err = proc.stderr.read()
    assert "sweep interrupted: 0 of 1 members done; rerun the same command" in err
    statuses = {m["name"]: m["status"] for m in json.loads((out / "sweep.json").read_text())["members"]}
    assert statuses == {MEMBERS[0]: "interrupted"}
