"""An LR sweep on two CPU slots: members run two at a time; best lr per preset; lr-from for arch sweeps."""

import json
from datetime import datetime

import pytest

from hybridlm.cli import main
from hybridlm.sweep.plan import BaseOptions, build_arch_plan

LR = ["sweep", "lr", "--preset", "tiny", "--presets", "GA,GG", "--lrs", "1e-3,3e-3", "--steps", "6",
      "--set", "train.eval_interval=3", "--set", "train.batch_size=4", "--set", "data.seq_len=32",
      "--set", "train.eval_batches=2", "--set", "train.warmup_steps=2", "--devices", "cpu,cpu", "--no-progress"]
MEMBERS = ["tiny__GA__lr1e-3", "tiny__GA__lr3e-3", "tiny__GG__lr1e-3", "tiny__GG__lr3e-3"]


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweeps") / "lr"
    assert main([*LR, "--out", str(out)]) == 0
    return out


def test_two_slots_run_two_members_at_once(lr_sweep):
    members = json.loads((lr_sweep / "sweep.json").read_text())["members"]
    assert [m["name"] for m in members] == MEMBERS and all(m["status"] == "done" for m in members)
    spans = [(datetime.fromisoformat(m["started"]), datetime.fromisoformat(m["finished"])) for m in members]
    # the first two started together, before either finished; the third waited for a free slot
    assert max(spans[0][0], spans[1][0]) < min(spans[0][1], spans[1][1])
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
    # with two slots each member's output goes to its own log, the sweep view stays on the terminal
    for name in MEMBERS:
        log = (lr_sweep / name / "train.log").read_text()
        assert "step 6: val loss" in log


def test_best_lr_per_preset(lr_sweep):
    summary = json.loads((lr_sweep / "summary.json").read_text())
    best = {b["group"]: b for b in summary["best_lr_per_preset"]}
    assert set(best) == {"tiny__GA", "tiny__GG"}
    by_name = {m["name"]: m for m in summary["members"]}
    for group in best:
        candidates = [by_name[f"{group}__lr{lr}"] for lr in ("1e-3", "3e-3")]
        winner = min(candidates, key=lambda m: m["best_val_loss"])
        assert best[group]["best_lr"] == winner["lr"] and best[group]["best_val_loss"] == winner["best_val_loss"]
        assert set(best[group]["losses"]) == {"1e-3", "3e-3"}
    md = (lr_sweep / "summary.md").read_text()
    assert "## Best learning rate per preset" in md and "| tiny__GA " in md
    for name in ("val_loss_curves.png", "loss_vs_lr.png", "loss_vs_throughput.png"):
        assert (lr_sweep / name).read_bytes()[:4] == b"\x89PNG" and (lr_sweep / name).stat().st_size > 10_000


def test_arch_sweep_takes_lrs_from_the_lr_sweep(lr_sweep, tmp_path, capsys):
    summary = json.loads((lr_sweep / "summary.json").read_text())
    best = {b["group"]: b["best_lr"] for b in summary["best_lr_per_preset"]}
    options = BaseOptions(out=tmp_path / "arch", preset="tiny", steps=6,
                          overrides=["train.eval_interval=3", "train.batch_size=4", "data.seq_len=32",
                                     "train.eval_batches=2", "train.warmup_steps=2"])
    plan = build_arch_plan(options, "GA,GG,AA", lr_from=lr_sweep)
    lrs = {m.name: (m.lr, m.lr_source) for m in plan.members}
    assert lrs["tiny__GA"][0] == best["tiny__GA"] and "best lr of tiny__GA" in lrs["tiny__GA"][1]
    assert lrs["tiny__GG"][0] == best["tiny__GG"]
    # AA (100 % attention) was not in the LR sweep: the nearest attention fraction is GA's 50 %
    assert lrs["tiny__AA"][0] == best["tiny__GA"] and "nearest attention fraction (tiny__GA 50%)" in lrs["tiny__AA"][1]
    assert main(["sweep", "arch", "--preset", "tiny", "--layouts", "AA", "--lr-from", str(lr_sweep), "--steps", "6",
                 "--out", str(tmp_path / "arch"), "--devices", "cpu", "--dry-run"]) == 0
    assert "nearest attention fraction" in capsys.readouterr().out
    assert main(["sweep", "arch", "--preset", "tiny", "--layouts", "AA", "--lr-from", str(tmp_path),
                 "--out", str(tmp_path / "arch"), "--dry-run"]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
