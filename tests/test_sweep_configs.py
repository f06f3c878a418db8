"""Members train from the config file written when the sweep is planned (tiny preset, 4 steps)."""

import json
import shutil
import sys

import pytest

from hybridlm.cli import build_parser, main
from hybridlm.config.presets import PRESETS
from hybridlm.runs import RunDir
from hybridlm.sweep.configs import merge_with_previous, record_member_configs
from hybridlm.sweep.state import write_sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BUDGET = ["--preset", "tiny", "--steps", "4", "--set", "train.eval_interval=2", "--set", "train.batch_size=4",
          "--set", "data.seq_len=32", "--set", "train.eval_batches=2", "--set", "train.warmup_steps=1",
          "--devices", "cpu", "--no-progress"]
ORIGINAL_TINY = PRESETS["tiny"]


@pytest.fixture(autouse=True)
def one_thread_members(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def edited_tiny():
    """The tiny preset as someone might edit it: only this (planning) process sees the change."""
    config = ORIGINAL_TINY()
    config.train.weight_decay = 0.05
    return config


def members_of(out):
    return {m["name"]: m for m in json.loads((out / "sweep.json").read_text())["members"]}


def test_members_train_from_their_planned_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "arch"
    command = ["sweep", "arch", "--layouts", "GG,GA", *BUDGET, "--out", str(out)]
    monkeypatch.setitem(PRESETS, "tiny", edited_tiny)
    # plan and save it as `sweep` does before any member starts, then edit one member's file
    args = build_parser().parse_args(command)
    plan = args.build(args)
    merge_with_previous(plan)
    record_member_configs(plan)
    write_sweep(plan, command)
    edited = out / "configs" / "tiny__GA.toml"
    edited.write_text(edited.read_text().replace("lr = 0.003", "lr = 0.01"))

    assert main(command) == 1
    members = members_of(out)
    gg, ga = members["tiny__GG"], members["tiny__GA"]
    assert ga["status"] == "failed" and ga["attempts"] == 0 and not (out / "tiny__GA").exists()
    assert ga["error"] == (f"{edited} was changed after planning (sha256 mismatch); delete it and rerun the sweep "
                           "to have it written again from the recipe in sweep.json, or plan the change as a new "
                           "sweep with another --out")
    assert gg["status"] == "done" and gg["attempts"] == 1
    # the member process never saw the edited preset: it trained the planned file. Its config.toml is
    # that file, value for value (training may fill in model.vocab_size and fla.path; tiny's bpe:1024
    # tokenizer and FLA from pip leave both as planned)
    planned = tomllib.loads((out / "configs" / "tiny__GG.toml").read_text())
    trained = tomllib.loads(RunDir(out / "tiny__GG").config_file.read_text())
    assert trained == planned and trained["train"]["weight_decay"] == 0.05
    assert RunDir(out / "tiny__GG").read_results()["config"]["train"]["weight_decay"] == 0.05

    # the same command without the preset edit: refused, naming the member and the key
    capsys.readouterr()
    with monkeypatch.context() as mp:
        mp.setitem(PRESETS, "tiny", ORIGINAL_TINY)
        assert main(command) == 2
    err = capsys.readouterr().err
    assert f"{out}/tiny__GG was planned as {out}/configs/tiny__GG.toml, but its recipe now resolves differently: " \
           "train.weight_decay 0.05 -> 0.1" in err
    assert members_of(out)["tiny__GG"]["attempts"] == 1

    # an attempt that died before its first checkpoint is started clean; the deleted file is written again
    run = RunDir(out / "tiny__GG")
    run.results_file.unlink()
    shutil.rmtree(run.checkpoints)
    edited.unlink()
    assert main(command) == 0
    members = members_of(out)
    assert members["tiny__GG"]["attempts"] == 2 and members["tiny__GA"]["attempts"] == 1
    assert all(m["status"] == "done" for m in members.values())
    assert "start tiny__GG on cpu" in capsys.readouterr().err
    assert [e["step"] for e in RunDir(out / "tiny__GG").read_metrics() if e["event"] == "eval"] == [2, 4]
    planned = tomllib.loads((out / "configs" / "tiny__GA.toml").read_text())
    assert planned["train"]["lr"] == 0.003
    assert tomllib.loads(RunDir(out / "tiny__GA").config_file.read_text()) == planned
