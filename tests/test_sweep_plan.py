"""Sweep plans without training: names, exp7, equal conditions, conflicts, lr-from rule, devices, queue."""

import json
import time

import pytest

from hybridlm.cli import main
from hybridlm.errors import ConfigError
from hybridlm.sweep.devices import Slot, parse_devices
from hybridlm.sweep.lr_from import GroupBest, LrTable
from hybridlm.sweep.plan import BaseOptions, build_arch_plan, build_grid_plan, build_lr_plan
from hybridlm.sweep.queue import SlotQueue
from hybridlm.sweep.specs import format_lr, format_value, toml_literal

SMALL = ["train.eval_interval=4", "train.batch_size=4", "data.seq_len=32", "train.eval_batches=2"]


def options(tmp_path, preset="tiny", overrides=SMALL, **kw):
    return BaseOptions(out=tmp_path / "sweep", preset=preset, overrides=list(overrides), **kw)


def test_names_and_literals():
    assert [format_lr(x) for x in (5e-4, 1e-3, 2e-3, 1.5e-3, 1.0)] == ["5e-4", "1e-3", "2e-3", "1.5e-3", "1e0"]
    assert format_value([5, 11]) == "5-11" and format_value([]) == "none" and format_value(0.002) == "2e-3"
    assert format_value("fla") == "fla" and format_value(True) == "true" and format_value(256) == "256"
    assert toml_literal("GA") == '"GA"' and toml_literal([5, 11]) == "[5, 11]" and toml_literal(1e-3) == "0.001"


def test_lr_plan_members_dirs_and_overrides(tmp_path):
    plan = build_lr_plan(options(tmp_path, steps=8), "tiny,GG", "1e-3,3e-3")
    assert [m.name for m in plan.members] == ["tiny__lr1e-3", "tiny__lr3e-3", "tiny__GG__lr1e-3", "tiny__GG__lr3e-3"]
    assert [m.group for m in plan.members] == ["tiny", "tiny", "tiny__GG", "tiny__GG"]
    gg = plan.members[2]
    assert gg.layout == "GG" and gg.attention_fraction == 0.0 and gg.lr == 1e-3 and gg.steps == 8
    assert gg.tokens == 8 * 4 * 32 and gg.params > 200_000
    # the recipe (`--preset tiny --set ...`, kept in sweep.json) resolves to the member's config
    config = gg.build_config()
    assert config.train.save_interval == 4  # periodic checkpoints at the eval interval, so it can resume
    assert config.run.name == "tiny__GG__lr1e-3"
    # the member trains from the config file written when the plan is saved, nothing else
    sweep = tmp_path / "sweep"
    assert plan.train_args(gg) == gg.train_args(plan.member_dir(gg)) == [
        "train", "--config", str(sweep / "configs" / "tiny__GG__lr1e-3.toml"), "--out", str(sweep / "tiny__GG__lr1e-3")]
    assert plan.conditions["token_budget"] == 8 * 4 * 32 and plan.conditions["swept"] == ["model.layout", "train.lr"]


def test_exp7_is_the_13_reference_layouts(capsys, tmp_path):
    assert main(["sweep", "arch", "--layouts", "exp7", "--steps", "300", "--out", str(tmp_path / "arch"),
                 "--devices", "cpu", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| h100_")]
    assert len(rows) == 13
    assert "| h100_deltanet " in rows[0] and "GGGGGGGGGGGG" in rows[0] and "AAAAAAAAAAAA" in rows[-1]
    assert "| h100_hybrid_sparse " in out and "GGGGGAGGGGGA" in out
    assert "300 steps x batch 48 x seq 1024" in out and "dry run: nothing was trained" in out
    assert not (tmp_path / "arch").exists()


def test_layout_string_of_wrong_length_is_refused_up_front(tmp_path):
    with pytest.raises(ConfigError, match="layout 'GAG' has 3 layers but the base 'tiny' has 2"):
        build_arch_plan(options(tmp_path), "GG,GAG")
    with pytest.raises(ConfigError, match="neither a preset nor a layout string"):
        build_arch_plan(options(tmp_path), "GG,not_a_preset")
    with pytest.raises(ConfigError, match="upper-case"):
        build_arch_plan(options(tmp_path), "ga")


def test_unequal_token_budget_or_data_is_refused_unless_swept(tmp_path):
    # tiny and cpu_demo differ in seq_len, batch size, steps and tokenizer: not comparable
    with pytest.raises(ConfigError, match="members differ in data"):
        build_lr_plan(options(tmp_path, overrides=[]), "tiny,cpu_demo", "1e-3")
    # made equal with --set, the same two presets form a valid sweep
    equal = ["data.seq_len=32", "data.tokenizer=\"bpe:1024\"", "train.batch_size=4", "train.eval_batches=2",
             "train.eval_interval=4"]
    plan = build_lr_plan(options(tmp_path, overrides=equal, steps=8), "tiny,cpu_demo", "1e-3")
    assert plan.conditions["token_budget"] == 8 * 4 * 32 and "train.warmup_steps" in plan.conditions["also_differs"]
    # batch size is a condition, but swept explicitly it is allowed and reported as varying
    grid = build_grid_plan(options(tmp_path, overrides=SMALL[:1] + SMALL[2:]), ["train.batch_size=[4,8]"])
    assert grid.conditions["token_budget"] == "varies" and grid.conditions["swept"] == ["train.batch_size"]


def test_sweep_owned_keys_cannot_be_set(tmp_path):
    with pytest.raises(ConfigError, match="--set train.lr conflicts with --lrs"):
        build_lr_plan(options(tmp_path, overrides=[*SMALL, "train.lr=1e-3"]), "tiny", "1e-3")
    with pytest.raises(ConfigError, match="conflicts with --steps"):
        build_arch_plan(options(tmp_path, overrides=[*SMALL, "train.max_steps=5"], steps=8), "GA")
    with pytest.raises(ConfigError, match="conflicts with --set-grid"):
        build_grid_plan(options(tmp_path, overrides=[*SMALL, "train.lr=1e-3"]), ["train.lr=[1e-3,2e-3]"])
    with pytest.raises(ConfigError, match="unknown config key"):
        build_grid_plan(options(tmp_path), ["train.learning_rate=[1e-3]"])
    with pytest.raises(ConfigError, match="non-empty list"):
        build_grid_plan(options(tmp_path), ["train.lr=1e-3"])


def test_grid_is_the_cartesian_product_and_keeps_invalid_members(tmp_path):
    plan = build_grid_plan(options(tmp_path), ["train.lr=[1e-3,2e-3]", "model.attention_layers=[[0],[99]]"])
    names = [m.name for m in plan.members]
    assert names == ["tiny__lr=1e-3__attention_layers=0", "tiny__lr=1e-3__attention_layers=99",
                     "tiny__lr=2e-3__attention_layers=0", "tiny__lr=2e-3__attention_layers=99"]
    bad = [m for m in plan.members if m.error]
    assert [m.name for m in bad] == names[1::2]
    assert all(m.status == "failed" and "index 99, outside 0..1" in m.error for m in bad)
    good = plan.member(names[2])
    assert good.layout == "AG" and good.lr == 2e-3 and good.swept == {"train.lr": 2e-3, "model.attention_layers": [0]}


def test_lr_from_rule():
    table = LrTable([GroupBest("h100_deltanet", "GGGG", 0.0, 1e-3, 3.0),
                     GroupBest("h100_hybrid_sparse", "GAGA", 0.5, 2e-3, 2.9),
                     GroupBest("h100_transformer", "AAAA", 1.0, 8e-3, 3.1)])
    same_name = table.choose("h100_hybrid_sparse", "XXXX", 0.9)
    assert same_name.lr == 2e-3 and "best lr of h100_hybrid_sparse" in same_name.source
    same_layout = table.choose("tiny__GAGA", "GAGA", 0.5)
    assert same_layout.lr == 2e-3 and "layout GAGA" in same_layout.source
    nearest = table.choose("other", "GGGA", 0.2)
    assert nearest.lr == 1e-3 and "nearest attention fraction (h100_deltanet 0%)" in nearest.source
    tie = table.choose("other", "GAAA", 0.75)  # halfway between 50 % (2e-3) and 100 % (8e-3)
    assert tie.lr == pytest.approx(4e-3) and "geometric mean" in tie.source
    with pytest.raises(ConfigError, match="no finished members"):
        LrTable([])


def test_devices():
    assert [s.device for s in parse_devices("auto", gpu_count=0)] == ["cpu"]
    two = parse_devices("cpu,cpu", gpu_count=0, cpu_count=8)
    assert [s.device for s in two] == ["cpu", "cpu"] and two[0].env["OMP_NUM_THREADS"] == "4"
    assert two[1].env["CUDA_VISIBLE_DEVICES"] == ""
    gpus = parse_devices("auto", gpu_count=2)
    assert [s.device for s in gpus] == ["cuda:0", "cuda:1"] and gpus[1].env["CUDA_VISIBLE_DEVICES"] == "1"
    assert [s.device for s in parse_devices("0,1", gpu_count=2)] == ["cuda:0", "cuda:1"]
    with pytest.raises(ConfigError, match="torch sees no GPU"):
        parse_devices("cuda:0", gpu_count=0)
    with pytest.raises(ConfigError, match="not cpu, cuda"):
        parse_devices("tpu", gpu_count=0)


class FakeJob:
    """Runs for `seconds` once started; records which slot ran it and when."""

    def __init__(self, name, seconds, log):
        self.name, self.seconds, self.log = name, seconds, log

    def start(self, slot):
        self.slot, self.t0 = slot, time.perf_counter()
        self.log.append(("start", self.name, slot.index, self.t0))

    def poll(self):
        if time.perf_counter() - self.t0 >= self.seconds:
            self.log.append(("end", self.name, self.slot.index, time.perf_counter()))
            return True
        return False

    def interrupt(self):
        pass

    def wait_stopped(self, timeout):
        pass


def test_queue_runs_one_job_per_slot_in_plan_order():
    log = []
    jobs = [FakeJob(f"j{i}", 0.3, log) for i in range(5)]
    queue = SlotQueue(jobs, [Slot(0, "cpu"), Slot(1, "cpu")], poll_interval=0.02)
    started = time.perf_counter()
    finished = queue.run()
    elapsed = time.perf_counter() - started
    assert sorted(j.name for j in finished) == [f"j{i}" for i in range(5)]
    assert queue.max_running == 2
    assert [e[1] for e in log if e[0] == "start"] == ["j0", "j1", "j2", "j3", "j4"]
    running, peak = 0, 0
    for event in sorted(log, key=lambda e: (e[3], e[0] == "start")):
        running += 1 if event[0] == "start" else -1
        peak = max(peak, running)
    assert peak == 2
    assert 0.85 < elapsed < 1.5  # 3 rounds of 0.3 s on two slots, not 5 rounds on one


def test_dry_run_writes_nothing(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["sweep", "grid", "--preset", "tiny", "--set-grid", "model.attention_layers=[[0],[99]]",
                 "--steps", "8", "--out", str(out), "--devices", "cpu", "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "tiny__attention_layers=0" in text and "invalid: invalid config" in text and "~" in text
    assert not out.exists()
    assert main(["sweep", "lr", "--presets", "tiny", "--lrs", "1e-3,abc", "--out", str(out), "--dry-run"]) == 2
    assert "--lrs must be comma-separated numbers" in capsys.readouterr().err


def test_sweep_json_round_trip(tmp_path):
    from hybridlm.sweep.configs import merge_with_previous
    from hybridlm.sweep.state import load_plan, write_sweep

    plan = build_arch_plan(options(tmp_path, steps=8), "GG,GA")
    plan.members[0].status, plan.members[0].error, plan.members[0].attempts = "failed", "boom", 1
    write_sweep(plan, ["sweep", "arch"])
    data = json.loads((plan.out / "sweep.json").read_text())
    assert data["kind"] == "arch" and data["command"] == ["sweep", "arch"] and len(data["members"]) == 2
    loaded = load_plan(plan.out)
    assert loaded.members[0].error == "boom" and loaded.members[1].overrides == plan.members[1].overrides
    again = build_arch_plan(options(tmp_path, steps=8), "GG,GA")
    merge_with_previous(again)
    assert again.members[0].attempts == 1 and again.members[0].status == "failed"
    changed = build_arch_plan(options(tmp_path, steps=9), "GG,GA")
    with pytest.raises(ConfigError, match="was planned with other settings"):
        merge_with_previous(changed)


def saved_plan(tmp_path, **kw):
    """A plan as `sweep` saves it before training: configs/NAME.toml and their sha256 in sweep.json."""
    from hybridlm.sweep.configs import merge_with_previous, record_member_configs
    from hybridlm.sweep.state import write_sweep

    plan = build_arch_plan(options(tmp_path, steps=8, **kw), "GG,GA")
    merge_with_previous(plan)
    record_member_configs(plan)
    write_sweep(plan, ["sweep", "arch"])
    return plan


def test_plan_writes_each_members_config_and_its_sha256(tmp_path):
    import hashlib

    from hybridlm.config import changed_keys, resolve

    plan = saved_plan(tmp_path)
    stored = {m["name"]: m for m in json.loads((plan.out / "sweep.json").read_text())["members"]}
    for member in plan.members:
        path = plan.out / "configs" / f"{member.name}.toml"
        text = path.read_text()
        assert text == member.build_config().to_toml()
        entry = stored[member.name]
        assert entry["planned_config"] == f"configs/{member.name}.toml"
        assert entry["config_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        # the recipe stays in sweep.json for people to read
        assert entry["preset"] == "tiny" and entry["overrides"] == member.overrides
        # `train --config FILE` (over the defaults) is the same experiment as the recipe
        assert changed_keys(resolve(file=path), member.build_config()) == []


def test_rerun_with_an_edited_preset_or_base_is_refused_naming_member_and_key(tmp_path, monkeypatch):
    from hybridlm.config.presets import PRESETS
    from hybridlm.sweep.configs import merge_with_previous

    base = tmp_path / "base.toml"
    base.write_text("[train]\nweight_decay = 0.1\n")
    plan = saved_plan(tmp_path, config_file=str(base))
    original = PRESETS["tiny"]

    def edited_tiny():
        config = original()
        config.train.grad_clip = 0.5
        return config

    with monkeypatch.context() as mp:
        mp.setitem(PRESETS, "tiny", edited_tiny)
        refused = (r"tiny__GG was planned as .*configs/tiny__GG\.toml, but its recipe now resolves differently: "
                   r"train\.grad_clip 1\.0 -> 0\.5 \(tiny__GA changed too\)")
        with pytest.raises(ConfigError, match=refused):
            merge_with_previous(build_arch_plan(options(tmp_path, steps=8, config_file=str(base)), "GG,GA"))
    base.write_text("[train]\nweight_decay = 0.2\n")  # the --config base file edited
    with pytest.raises(ConfigError, match=r"tiny__GG .* train\.weight_decay 0\.1 -> 0\.2"):
        merge_with_previous(build_arch_plan(options(tmp_path, steps=8, config_file=str(base)), "GG,GA"))
    base.write_text("[train]\nweight_decay = 0.1\n")
    with pytest.raises(ConfigError, match=r"tiny__GG was planned with other settings .*data\.seq_len=64"):
        merge_with_previous(build_arch_plan(options(tmp_path, steps=8, config_file=str(base),
                                                    overrides=[*SMALL[:2], "data.seq_len=64", SMALL[3]]), "GG,GA"))
    again = build_arch_plan(options(tmp_path, steps=8, config_file=str(base)), "GG,GA")
    merge_with_previous(again)  # unchanged: accepted, the planned files and hashes carry over
    assert [m.config_sha256 for m in again.members] == [m.config_sha256 for m in plan.members]


def test_an_edited_or_deleted_member_config_file(tmp_path):
    from hybridlm.sweep.configs import merge_with_previous, planned_config_problem, record_member_configs

    plan = saved_plan(tmp_path)
    gg, ga = plan.members
    assert planned_config_problem(plan, gg) is None
    path = plan.config_path(gg)
    path.write_text(path.read_text().replace("lr = 0.003", "lr = 0.01"))
    # a rerun is not refused for it (the recipe did not change); the member fails when it would start
    again = build_arch_plan(options(tmp_path, steps=8), "GG,GA")
    merge_with_previous(again)
    record_member_configs(again)
    assert "lr = 0.01" in path.read_text()  # never silently rewritten
    assert planned_config_problem(again, again.members[0]) == (
        f"{path} was changed after planning (sha256 mismatch); delete it and rerun the sweep to have it written "
        "again from the recipe in sweep.json, or plan the change as a new sweep with another --out")
    assert planned_config_problem(again, again.members[1]) is None
    # deleted, it is written again from the recipe, which still resolves to the planned text
    path.unlink()
    assert "is missing" in planned_config_problem(again, again.members[0])
    record_member_configs(again)
    assert path.read_text() == gg.build_config().to_toml() and planned_config_problem(again, again.members[0]) is None


def test_member_leftovers_are_only_this_members_run(tmp_path):
    from hybridlm.config import resolve
    from hybridlm.sweep.configs import is_member_leftover

    plan = build_arch_plan(options(tmp_path, steps=8), "GG")
    config = plan.members[0].build_config()
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in (".lock", "train_error.txt", "train.log", "metrics.jsonl"):
        (run / name).write_text("x")
    assert is_member_leftover(run, config)  # an attempt that died before writing its config
    resolve(base=config, values={"model.vocab_size": 1000, "train.log_interval": 3}).save(run / "config.toml")
    assert is_member_leftover(run, config)  # what training fills in / settings that never change the experiment
    resolve(base=config, values={"train.lr": 1.0}).save(run / "config.toml")
    assert not is_member_leftover(run, config)  # a run of another experiment: not ours to delete
    config.save(run / "config.toml")
    (run / "notes.txt").write_text("mine")
    assert not is_member_leftover(run, config)


def test_train_args_activate_a_clone_named_with_set(tmp_path):
    plan = build_arch_plan(options(tmp_path, overrides=[*SMALL, "fla.path=/opt/fla"], steps=8), "GG")
    assert plan.train_args(plan.members[0])[-2:] == ["--fla-path", "/opt/fla"]
