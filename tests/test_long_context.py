"""Long-context evaluation: loss against position (bins, weights, the run's windows) and passkey retrieval
(prompt placement, lengths, determinism, scoring), end to end through `hybridlm eval`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_eval_helpers import gpt2, tiny_hybrid, write_run_dir

from hybridlm.cli import main
from hybridlm.errors import HybridLMError
from hybridlm.evaluation.passkey import (
    INTRO,
    QUESTION,
    PasskeyBuilder,
    PasskeySettings,
    lengths_up_to,
    passkey_prompts,
)
from hybridlm.evaluation.passkey_score import key_matches, score_passkey
from hybridlm.evaluation.position_loss import bin_losses, per_position_sums, position_bins, position_loss

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SEQ_LEN = 32


@pytest.fixture(scope="module")
def tok():
    return gpt2()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tok):
    return write_run_dir(tmp_path_factory.mktemp("longrun") / "run", tiny_hybrid(tok.vocab_size, seed=4), tok,
                         seq_len=SEQ_LEN)


# ------------------------------------------------------------------ position loss
def test_log_and_fixed_width_bins_cover_every_position_once():
    assert position_bins(32) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32)]
    assert position_bins(20) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 20)]
    assert position_bins(1) == [(0, 1)]
    assert position_bins(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert position_bins(20, "5") == [(0, 5), (5, 10), (10, 15), (15, 20)]
    for length, spec in ((65536, "log"), (1000, 64), (7, 3)):
        bins = position_bins(length, spec)
        assert bins[0][0] == 0 and bins[-1][1] == length
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(bins, bins[1:]))
    for bad in ("linear", 0, "-4"):
        with pytest.raises(HybridLMError, match="bin"):
            position_bins(32, bad)


def test_per_position_loss_is_the_cross_entropy_at_each_position_and_averages_to_the_mean():
    torch.manual_seed(0)
    model = tiny_hybrid(97, seed=1).double()
    windows = torch.randint(0, 97, (5, 25))
    loss, hits, counts = per_position_sums(model, windows, batch_size=2)
    assert counts.tolist() == [5.0] * 24
    with torch.no_grad():
        logits = model(windows[:, :-1]).logits
    per_token = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")  # [5, 24]
    torch.testing.assert_close(loss, per_token.sum(0), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hits, (logits.argmax(-1) == windows[:, 1:]).double().sum(0))
    with torch.no_grad():
        mean = model(windows[:, :-1], labels=windows[:, 1:], return_logits=False).loss
    bins = bin_losses(loss, hits, counts, position_bins(24))
    assert sum(b["tokens"] for b in bins) == 5 * 24
    weighted = sum(b["loss"] * b["tokens"] for b in bins) / (5 * 24)
    assert weighted == pytest.approx(float(mean), rel=1e-12)
    assert bins[2]["loss"] == pytest.approx(float(per_token[:, 2:4].mean()), rel=1e-12)  # the [2, 4) bin
    # the batch size only groups the windows: the sums do not change
    again, _, _ = per_position_sums(model, windows, batch_size=5)
    torch.testing.assert_close(again, loss, rtol=1e-12, atol=1e-12)


def test_packed_documents_count_positions_from_each_documents_start():
    """With document packing a position is the context the model had: documents restart at 0, the target
    after an eos is skipped, and the loss is the packed forward's (the one training uses)."""
    from hybridlm.data.packing import pack_documents

    eos = 0
    model = tiny_hybrid(50, seed=3).double()
    windows = torch.tensor([[5, 6, 7, eos, 8, 9, eos, 10, 11, 12, 13],
                            [14, eos, 15, 16, 17, 18, 19, 20, 21, 22, 23]])
    loss, hits, counts = per_position_sums(model, windows, batch_size=2, eos_id=eos)
    # row 0: documents of 4, 3, 3 inputs (targets at positions 0-2, 0-1, 0-2: those after an eos are
    # skipped); row 1: 2 and 8 inputs (positions 0 and 0-7)
    assert counts.tolist() == [5, 4, 3, 1, 1, 1, 1, 1, 0, 0]
    packed = pack_documents(windows, eos)
    with torch.no_grad():
        mean = model(packed.inputs, labels=packed.labels, return_logits=False, cu_seqlens=packed.cu_seqlens).loss
    assert float(loss.sum() / counts.sum()) == pytest.approx(float(mean), rel=1e-10)
    bins = bin_losses(loss, hits, counts, position_bins(10, 4))
    assert [b["tokens"] for b in bins] == [13, 4, 0] and bins[-1]["loss"] is None


def test_position_loss_scores_the_runs_fixed_validation_windows(run_dir):
    from hybridlm.data import prepare_data, validation_batches
    from hybridlm.runs import RunDir, load_run, load_run_config
    from hybridlm.train.step import validation_stats

    model, _ = load_run(run_dir)
    config = load_run_config(RunDir(run_dir))
    entry = position_loss(model, run_dir, bins=8, limit=6)
    assert entry["count"] == 6 and entry["seq_len"] == SEQ_LEN and entry["tokens"] == 6 * SEQ_LEN
    assert [(b["start"], b["end"]) for b in entry["bins"]] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    (windows,) = validation_batches(prepare_data(config.data).val_tokens, 6, SEQ_LEN, num_batches=1)
    with torch.no_grad():
        loss_sum, hits, count = validation_stats(model, windows[:, :-1], windows[:, 1:])
    assert entry["metrics"]["loss"] == pytest.approx(float(loss_sum) / int(count), rel=1e-5)
    assert entry["metrics"]["acc"] == pytest.approx(int(hits) / int(count))
    # without a limit: the trainer's fixed set, batch_size rows x eval_batches
    default = position_loss(model, run_dir, bins="log", seq_len=16)
    assert default["count"] == config.train.batch_size * config.train.eval_batches and default["seq_len"] == 16


@pytest.mark.parametrize("packing", ["stream", "documents"])
def test_position_loss_of_a_trained_run_averages_to_its_logged_validation_loss(tmp_path, packing):
    """Default windows are the trainer's fixed validation set, packed as it trained, so the bins weighted
    by their tokens give back the val loss the run logged at the checkpoint's step."""
    out = tmp_path / "tiny"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--no-progress", "--set", "train.max_steps=20",
                 "--set", "train.eval_interval=20", "--set", "train.save_interval=20",
                 "--set", f"data.packing={packing}"]) == 0
    assert eval_cli("--run", str(out), "--checkpoint", "final", "--tasks", "position_loss") == 0
    entry = json.loads((out / "eval.json").read_text())["tasks"]["position_loss"]
    logged = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if m.get("event") == "eval" and m["step"] == entry["settings"]["checkpoint_step"]]
    weighted = sum(b["loss"] * b["tokens"] for b in entry["bins"]) / entry["tokens"]
    assert weighted == pytest.approx(entry["metrics"]["loss"], rel=1e-9)
    assert entry["metrics"]["loss"] == pytest.approx(logged[-1]["val_loss"], rel=1e-5)
    assert entry["seq_len"] == 64 and [b["end"] for b in entry["bins"]] == [1, 2, 4, 8, 16, 32, 64]
    assert entry["position"] == ("in the window" if packing == "stream" else "in the document")


# ------------------------------------------------------------------ passkey prompts
def test_passkey_prompts_have_the_asked_length_and_put_the_key_at_the_asked_depth(tok):
    builder = PasskeyBuilder(tok)
    settings = PasskeySettings(lengths=(120, 300), depths=(0.0, 0.3, 0.5, 1.0), samples=3, alternatives=2, seed=7)
    prompts = passkey_prompts(tok, settings)
    assert len(prompts) == 2 * 4 * 3
    assert [(p.length, p.depth) for p in prompts[:4]] == [(120, 0.0)] * 3 + [(120, 0.3)]
    for p in prompts:
        assert len(p.prompt) == p.length
        needle = builder.needle(p.passkey)
        assert p.prompt[p.key_position:p.key_position + len(needle)] == needle
        room = p.length - len(builder.intro) - len(needle) - len(builder.question)
        assert p.key_position - len(builder.intro) == round(p.depth * room)
        assert p.prompt[:len(builder.intro)] == builder.intro and p.prompt[-len(builder.question):] == builder.question
        assert len(p.passkey) == 5 and p.passkey.isdigit() and p.passkey[0] != "0"
        assert len(p.alternatives) == 2 and p.passkey not in p.alternatives
        assert all(len(a) == 5 and a.isdigit() for a in p.alternatives)
        assert tok.decode(p.prompt).count(p.passkey) == 2
    at_end = next(p for p in prompts if p.depth == 1.0)
    assert at_end.key_position + len(builder.needle(at_end.passkey)) == at_end.length - len(builder.question)
    text = tok.decode(next(p for p in prompts if p.depth == 0.0).prompt)
    assert text.startswith(INTRO + "\nThe pass key is") and text.endswith(QUESTION)


def test_passkey_prompts_are_deterministic_given_the_seed(tok):
    settings = PasskeySettings(lengths=(100,), depths=(0.0, 0.5), samples=4, seed=3)
    first, again = passkey_prompts(tok, settings), passkey_prompts(tok, settings)
    assert [(p.prompt, p.alternatives) for p in first] == [(p.prompt, p.alternatives) for p in again]
    other = passkey_prompts(tok, PasskeySettings(lengths=(100,), depths=(0.0, 0.5), samples=4, seed=4))
    assert [p.passkey for p in first] != [p.passkey for p in other]
    assert len({p.passkey for p in first}) > 1


def test_passkey_settings_refuse_bad_grids(tok):
    with pytest.raises(HybridLMError, match="no room for filler"):
        passkey_prompts(tok, PasskeySettings(lengths=(20,), depths=(0.5,)))
    with pytest.raises(HybridLMError, match="depths"):
        PasskeySettings(lengths=(100,), depths=(1.5,)).validate()
    with pytest.raises(HybridLMError, match="digits"):
        PasskeySettings(lengths=(100,), digits=0).validate()
    with pytest.raises(HybridLMError, match="length"):
        passkey_prompts(tok, PasskeySettings())
    assert lengths_up_to(64) == (4096,)
    assert lengths_up_to(16384) == (4096, 8192, 16384)
    assert lengths_up_to(65536) == (4096, 8192, 16384, 32768, 65536)


def test_key_matches_only_the_exact_digit_run():
    assert key_matches("71432", "71432") and key_matches(" 71432. Remember", "71432")
    assert not key_matches("714321", "71432") and not key_matches("7143", "71432")
    assert not key_matches("x 71432", "71432") and not key_matches("", "71432")


def test_passkey_scores_per_cell_and_the_true_keys_loglikelihood(tok, monkeypatch):
    from hybridlm.evaluation import passkey_score

    model = tiny_hybrid(tok.vocab_size, seed=2).double()
    settings = PasskeySettings(lengths=(90, 130), depths=(0.0, 1.0), samples=2, alternatives=2, seed=1)
    prompts = passkey_prompts(tok, settings)
    # a reader that finds the key only when it sits at depth 0: the cells must say so
    monkeypatch.setattr(passkey_score, "_greedy_texts", lambda model, prompts, *a: [
        f" {p.passkey}." if p.depth == 0.0 else " 12345" for p in prompts])
    entry = score_passkey(model, tok, settings, batch_size=3)
    assert entry["count"] == 8 and entry["metrics"]["exact_match"] == 0.5
    cells = {(c["length"], c["depth"]): c for c in entry["cells"]}
    assert set(cells) == {(90, 0.0), (90, 1.0), (130, 0.0), (130, 1.0)}
    assert all(c["exact_match"] == (1.0 if d == 0.0 else 0.0) and c["count"] == 2 for (_, d), c in cells.items())
    assert entry["exact_match_by_length"] == {"90": 0.5, "130": 0.5}
    assert 0.0 <= entry["metrics"]["choice_acc"] <= 1.0
    # the log-likelihood is log p(" KEY" | prompt), summed over the key's tokens (float32 in the scorer)
    expected = [_key_loglikelihood(model, p.prompt, PasskeyBuilder(tok).answer(p.passkey)) for p in prompts[:2]]
    assert cells[(90, 0.0)]["loglikelihood"] == pytest.approx(sum(expected) / 2, rel=1e-6)


def _key_loglikelihood(model, prompt: list[int], answer: list[int]) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + answer[:-1]])).logits[0], -1)
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(answer))


def test_greedy_decoding_path_agrees_with_teacher_forced_greedy(tok):
    """exact_match decodes with the product's generator; on a random model a hit is as rare as the
    teacher-forced greedy check says, and both are computed on the same prompts."""
    from hybridlm.evaluation import passkey_score
    from hybridlm.evaluation.scoring import score_requests

    model = tiny_hybrid(tok.vocab_size, seed=3)
    settings = PasskeySettings(lengths=(80,), depths=(0.5,), samples=3, alternatives=0, seed=5)
    prompts = passkey_prompts(tok, settings)
    builder = PasskeyBuilder(tok)
    texts = passkey_score._greedy_texts(model, prompts, builder, 2, "fp32")
    assert len(texts) == 3
    scores = score_requests(model, [(p.prompt, builder.answer(p.passkey)) for p in prompts])
    for p, text, (_, greedy) in zip(prompts, texts, scores):
        if greedy:  # teacher-forced argmax reproduces the key, so decoding it does as well
            assert key_matches(text, p.passkey)
    entry = score_passkey(model, tok, settings)
    assert "choice_acc" not in entry["metrics"] and set(entry["metrics"]) == {"exact_match", "loglikelihood"}


# ------------------------------------------------------------------ the command
def eval_cli(*args: str) -> int:
    return main(["eval", "--no-hub", "--no-progress", "--device", "cpu", *args])


def test_eval_cli_writes_long_context_json_and_plots(run_dir, capsys):
    assert eval_cli("--run", str(run_dir), "--tasks", "position_loss,passkey", "--limit", "4",
                    "--position-bins", "8", "--passkey-lengths", "80,120", "--passkey-depths", "0,1",
                    "--passkey-samples", "3", "--passkey-alternatives", "1", "--seed", "9") == 0
    out = capsys.readouterr().out
    assert "position_loss" in out and "exact_match" in out and "position_loss.png" in out and "passkey.png" in out
    data = json.loads((run_dir / "eval.json").read_text())
    pl, pk = data["tasks"]["position_loss"], data["tasks"]["passkey"]
    assert pl["count"] == 4 and len(pl["bins"]) == 4 and pl["settings"]["max_length"] == SEQ_LEN
    assert pl["settings"]["checkpoint_step"] == 0
    assert pk["count"] == 2 * 2 * 3 and len(pk["cells"]) == 4 and pk["passkey"]["seed"] == 9
    assert pk["passkey"]["samples"] == 3 and pk["settings"]["max_length"] == 120
    for name in ("position_loss.png", "passkey.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same flags give the same numbers (the prompts are seeded, scoring is deterministic)
    assert eval_cli("--run", str(run_dir), "--tasks", "passkey", "--passkey-lengths", "80,120",
                    "--passkey-depths", "0,1", "--passkey-samples", "3", "--passkey-alternatives", "1",
                    "--seed", "9") == 0
    again = json.loads((run_dir / "eval.json").read_text())["tasks"]
    assert again["passkey"]["cells"] == pk["cells"] and again["position_loss"] == pl  # kept


def test_eval_cli_draws_one_line_per_run(tmp_path, tok, capsys):
    runs = [write_run_dir(tmp_path / name, tiny_hybrid(tok.vocab_size, seed=i, layout=layout), tok, seq_len=16)
            for i, (name, layout) in enumerate((("gdn", "GG"), ("hybrid", "GA")))]
    plots = tmp_path / "figures"
    assert eval_cli("--run", str(runs[0]), "--run", str(runs[1]), "--tasks", "position_loss", "--limit", "3",
                    "--plot-dir", str(plots)) == 0
    assert (plots / "position_loss.png").is_file() and not (plots / "passkey.png").exists()
    assert all(json.loads((r / "eval.json").read_text())["tasks"]["position_loss"]["count"] == 3 for r in runs)
    assert str(plots / "position_loss.png") in capsys.readouterr().out


def test_eval_cli_rejects_bad_passkey_flags_in_one_line(run_dir, capsys):
    for flags, words in ((("--passkey-lengths", "4k"), "--passkey-lengths"), (("--passkey-depths", "0,2"), "depths"),
                         (("--passkey-lengths", "30"), "no room for filler")):
        assert eval_cli("--run", str(run_dir), "--tasks", "passkey", *flags) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
