"""`hybridlm compare` on hand-made run directories: sorting, eval columns, CSV, folders, errors,
and the equal-conditions warning above the table."""

import csv
import json

import pytest

from hybridlm.cli import main
from hybridlm.config import resolve
from hybridlm.sweep.compare import compare
from hybridlm.sweep.plots import pareto_front


def make_run(path, layout, lr, best, final, tps, evals=None, finished=True, overrides=(), config=None):
    """A run directory as `hybridlm train` leaves it (config, metrics, results), without training."""
    if config is None:
        config = resolve(preset="tiny", overrides=[f'model.layout="{layout}"', f"train.lr={lr}",
                                                   f'run.name="{path.name}"', *overrides])
    path.mkdir(parents=True)
    config.save(path / "config.toml")
    losses = [best + 0.5, best, final]
    with open(path / "metrics.jsonl", "w") as f:
        for step, loss in zip((20, 40, 60), losses):
            f.write(json.dumps({"event": "train", "step": step, "loss": loss + 0.1, "lr": lr}) + "\n")
            f.write(json.dumps({"event": "eval", "step": step, "tokens": step * 512, "val_loss": loss,
                                "val_accuracy": 0.1, "val_perplexity": 2.718 ** loss}) + "\n")
    if finished:
        results = {"experiment": path.name, "config": config.to_dict(),
                   "model": {"params_total": 218_000 + len(layout), "layout": layout,
                             "attention_fraction": layout.count("A") / len(layout)},
                   "results": {"best_val_loss": best, "best_step": 40, "final_val_loss": final,
                               "final_val_accuracy": 0.1, "final_val_perplexity": 2.718 ** final, "steps": 60,
                               "train_time_s": 10.0, "tokens_processed": 60 * 512, "tokens_per_s": tps}}
        (path / "results.json").write_text(json.dumps(results))
    if evals:
        tasks = {task: {"metrics": metrics, "count": 10} for task, metrics in evals.items()}
        (path / "eval.json").write_text(json.dumps({"format": 1, "tasks": tasks}))
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "gdn", "GG", 3e-3, best=5.0, final=5.1, tps=3000, evals={"arc_challenge": {"acc_norm": 0.30}})
    make_run(root / "hybrid", "GA", 3e-3, best=4.8, final=4.9, tps=2000, evals={"arc_challenge": {"acc_norm": 0.26}})
    make_run(root / "attn", "AA", 1e-3, best=4.9, final=4.95, tps=1000, evals={"arc_challenge": {"acc_norm": 0.28}})
    return root


def test_sort_orders_and_eval_columns(runs, tmp_path):
    table, records = compare([runs / "gdn", runs / "hybrid", runs / "attn"])
    assert [r["name"] for r in records] == ["hybrid", "attn", "gdn"] and [r["rank"] for r in records] == [1, 2, 3]
    assert "arc_challenge/acc_norm" in table.splitlines()[0]
    assert records[0]["eval"] == {"arc_challenge/acc_norm": 0.26} and records[0]["attention_pct"] == 50.0
    _, by_speed = compare([runs], sort="tokens_per_s")  # a folder of runs expands; higher is better
    assert [r["name"] for r in by_speed] == ["gdn", "hybrid", "attn"]
    _, by_arc = compare([runs], sort="arc_challenge/acc_norm")
    assert [r["name"] for r in by_arc] == ["gdn", "attn", "hybrid"]
    _, by_lr = compare([runs], sort="lr")
    assert by_lr[0]["name"] == "attn"


def test_cli_csv_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["compare", str(runs), "--csv", str(tmp_path / "c.csv"), "--out", str(out),
                 "--metric", "arc_challenge/acc_norm"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].startswith("|    1 | hybrid ")
    rows = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert [r["name"] for r in rows] == ["hybrid", "attn", "gdn"] and rows[2]["arc_challenge/acc_norm"] == "0.3"
    for name in ("val_loss_curves.png", "loss_vs_attention.png", "loss_vs_throughput.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert not (out / "loss_vs_lr.png").exists()  # every run is its own model: no lr series to draw
    assert "sorted by best_val_loss" in (out / "comparison.md").read_text()


def test_unfinished_run_is_listed_unranked(runs, tmp_path):
    make_run(runs / "running", "GA", 2e-3, best=4.0, final=4.2, tps=1, finished=False)
    _, records = compare([runs])
    last = records[-1]
    assert last["name"] == "running" and last["rank"] is None and last["status"] == "incomplete"
    assert last["best_val_loss"] == 4.0 and last["steps"] == 60  # from its metrics so far
    assert records[0]["name"] == "hybrid"


def test_pareto_front():
    records = [{"name": n, "best_val_loss": loss, "tokens_per_s": tps}
               for n, loss, tps in [("fast", 5.0, 3000), ("mid", 4.8, 2000), ("slow_worse", 4.9, 1000),
                                    ("slow_best", 4.7, 500)]]
    assert [r["name"] for r in pareto_front(records, "best_val_loss")] == ["fast", "mid", "slow_best"]


def test_errors(runs, tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(empty)]) == 2
    assert "neither a run directory" in capsys.readouterr().err
    assert main(["compare", str(runs), "--sort", "banana"]) == 2
    assert "cannot sort by 'banana'" in capsys.readouterr().err


def test_throughput_column_is_the_steady_rate_when_recorded(tmp_path):
    """A GPU run's first log interval holds Triton autotuning: rank and plot by the steady rate."""
    from hybridlm.sweep.records import run_record

    run = make_run(tmp_path / "gpu", "GA", 1e-3, 3.0, 3.1, tps=50_000.0)
    results = json.loads((run / "results.json").read_text())
    assert run_record(run)["tokens_per_s"] == 50_000.0  # older results: the overall rate
    results["results"]["tokens_per_s_steady"] = 116_000.0
    (run / "results.json").write_text(json.dumps(results))
    assert run_record(run)["tokens_per_s"] == 116_000.0


def test_curve_plot_gives_every_member_of_a_large_sweep_its_own_colour(tmp_path, monkeypatch):
    """A 13-layout sweep has more members than matplotlib's 10-colour cycle: no two curves may share one."""
    from hybridlm.sweep import plots

    root = tmp_path / "many"
    for i in range(13):
        make_run(root / f"m{i}", "GA", 1e-3, best=5.0 - i * 0.01, final=5.0, tps=1000)
    _, records = compare([root])
    styles = []
    real_save = plots._save

    def capture(fig, plt, path):
        styles.extend((line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines())
        return real_save(fig, plt, path)

    monkeypatch.setattr(plots, "_save", capture)
    plots.plot_val_curves(records, tmp_path / "curves.png")
    assert len(styles) == 13 and len(set(styles)) == 13 and (tmp_path / "curves.png").stat().st_size > 0


# ------------------------------------------------------------------ equal conditions
def test_different_token_budgets_are_warned_above_the_table(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "a", "GA", 3e-3, best=4.0, final=4.1, tps=1000, overrides=["train.max_steps=120"])
    make_run(root / "b", "GG", 3e-3, best=4.5, final=4.6, tps=1000, overrides=["train.max_steps=120"])
    make_run(root / "c", "AA", 1e-3, best=5.0, final=5.1, tps=1000, overrides=["train.max_steps=40"])
    warning = ("WARNING: these runs were not trained under equal conditions, so the ranking compares unlike runs:\n"
               "- tokens 61,440 (a, b) vs 20,480 (c)\n"
               "- train.max_steps 120 (a, b) vs 40 (c)")
    text, records = compare([root])
    assert text.startswith(warning + "\n\n| rank ")
    assert [r["name"] for r in records] == ["a", "b", "c"]  # still ranked, only warned
    assert main(["compare", str(root), "--csv", str(tmp_path / "c.csv"), "--out", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(warning) and printed.index("WARNING") < printed.index("| rank ")
    rows = {r["name"]: r["unequal_conditions"] for r in csv.DictReader(open(tmp_path / "c.csv"))}
    assert rows == {"a": "tokens=61,440; train.max_steps=120", "b": "tokens=61,440; train.max_steps=120",
                    "c": "tokens=20,480; train.max_steps=40"}
    md = (tmp_path / "report" / "comparison.md").read_text()
    assert "> " + warning.replace("\n", "\n> ") in md and md.index("> WARNING") < md.index("| rank ")


def test_different_seq_len_and_data_source_are_warned(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "a", "GA", 3e-3, best=4.0, final=4.1, tps=1000)
    make_run(root / "b", "GG", 3e-3, best=4.5, final=4.6, tps=1000)
    make_run(root / "c", "GA", 3e-3, best=5.0, final=5.1, tps=1000,
             overrides=["data.seq_len=128", 'data.source="embedded"'])
    lines = compare([root / "a", root / "b", root / "c"])[0].splitlines()
    assert lines[0].startswith("WARNING: these runs were not trained under equal conditions")
    assert lines[1:4] == ["- tokens 30,720 (a, b) vs 61,440 (c)",
                          "- data.seq_len 64 (a, b) vs 128 (c)",
                          '- data.source "embedded:shakespeare" (a, b) vs "embedded" (c)']
    assert lines[4] == "" and lines[5].startswith("| rank ")


def test_runs_differing_only_in_layout_and_lr_get_no_warning(runs):
    from hybridlm.sweep.summary import ranking_table

    text, records = compare([runs])
    assert "WARNING" not in text and text == ranking_table(records)
    assert all(r["unequal_conditions"] is None for r in records)


def test_members_of_one_sweep_reproduce_its_table_without_warning(tmp_path):
    from hybridlm.sweep.plan import BaseOptions, build_grid_plan
    from hybridlm.sweep.state import load_plan, write_sweep
    from hybridlm.sweep.records import rank_records, sweep_records
    from hybridlm.sweep.summary import ranking_table

    small = ["train.eval_interval=4", "data.seq_len=32", "train.eval_batches=2", "train.max_steps=8"]
    plan = build_grid_plan(BaseOptions(out=tmp_path / "sweep", preset="tiny", overrides=small),
                           ["train.batch_size=[4,8]", "train.lr=[1e-3,2e-3]"])
    write_sweep(plan)
    for i, member in enumerate(plan.members[:3]):  # the last member is still planned: no run directory yet
        make_run(plan.member_dir(member), "GA", member.lr, best=4.0 + i, final=4.1 + i, tps=1000,
                 config=member.build_config())
    text, records = compare([tmp_path / "sweep"])
    assert text == ranking_table(rank_records(sweep_records(load_plan(tmp_path / "sweep"))))
    assert len(records) == 4 and "WARNING" not in text
    # the sweep varies batch size; a plain run next to it does not, so that difference is now a warning
    make_run(tmp_path / "other", "GA", 1e-3, best=3.0, final=3.1, tps=1000, overrides=small)
    text, _ = compare([tmp_path / "sweep", tmp_path / "other"])
    assert text.startswith("WARNING: these runs were not trained under equal conditions")
    assert "- train.batch_size 8 (other, " in text and "- tokens " in text


def test_unreadable_config_is_reported_not_raised(runs, capsys):
    (runs / "attn" / "config.toml").write_text("[train\nmax_steps = ")
    assert main(["compare", str(runs)]) == 0
    out = capsys.readouterr().out
    first, second = out.splitlines()[:2]
    assert first == "WARNING: could not check that these runs were trained under equal conditions:"
    assert second.startswith("- cannot read the config of attn: config file ") and "not valid TOML" in second
    assert second.endswith("; its conditions are unchecked") and "| hybrid " in out
    (runs / "attn" / "config.toml").write_text("[train]\nbanana = 1\n")
    text, records = compare([runs])
    assert "unknown config key 'train.banana'" in text.splitlines()[1]
    assert next(r for r in records if r["name"] == "attn")["unequal_conditions"].startswith("config unreadable: ")
