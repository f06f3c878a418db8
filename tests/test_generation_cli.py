"""`hybridlm generate` end to end on a tiny random run (prompts file -> JSONL, a conversation from piped stdin,
one-line errors), the GPU verify rows' machinery and the generation benchmark, on the CPU."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest
import torch

from hybridlm.cli import main
from test_eval_helpers import gpt2, tiny_hybrid, write_run_dir

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tokenizer = gpt2()
    return write_run_dir(tmp_path_factory.mktemp("gen") / "run", tiny_hybrid(tokenizer.vocab_size, seed=3), tokenizer)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_prompts_file_to_jsonl_is_the_same_at_any_batch_size(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The quick brown fox\n\nLine 3: the\nA\nnumber 21 and a much longer prompt than the others\n")
    args = ["generate", "--run", str(run_dir), "--prompts-file", str(prompts), "--max-new-tokens", "6",
            "--temperature", "0", "--device", "cpu"]
    assert main(args + ["--batch-size", "1"]) == 0
    one_by_one = jsonl(capsys.readouterr().out)
    assert main(args + ["--batch-size", "3", "--out", str(tmp_path / "out.jsonl")]) == 0
    batched = jsonl((tmp_path / "out.jsonl").read_text())
    assert [r["prompt"] for r in batched] == ["The quick brown fox", "Line 3: the", "A",
                                              "number 21 and a much longer prompt than the others"]
    assert batched == one_by_one
    assert all(r["stop"] in ("eos", "length") and r["tokens"] <= 6 for r in batched)


def test_jsonl_prompts_keep_their_other_fields(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Line 1"}\n{"id": 7, "prompt": "the lazy dog"}\n')
    assert main(["generate", "--run", str(run_dir), "--prompts-file", str(prompts), "--max-new-tokens", "3",
                 "--seed", "0", "--top-k", "5", "--repetition-penalty", "1.3", "--device", "cpu"]) == 0
    rows = jsonl(capsys.readouterr().out)
    assert [(r["id"], r["prompt"]) for r in rows] == [("a", "Line 1"), (7, "the lazy dog")]


def test_interactive_conversation_from_piped_stdin(run_dir, monkeypatch, capsys):
    """Two turns, the state kept: the replies equal a Conversation's, and a rerun with the seed repeats them."""
    from hybridlm.generate import load_for_generation
    from hybridlm.model.conversation import Conversation
    from hybridlm.model.decoder import Decoder
    from hybridlm.model.sampling import Sampling

    lines = "Line 4: the quick\nbrown fox jumps\n"
    argv = ["generate", "--run", str(run_dir), "--interactive", "--max-new-tokens", "5", "--temperature", "0",
            "--device", "cpu"]
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(argv) == 0
    out = capsys.readouterr().out
    model, tokenizer = load_for_generation(str(run_dir), device="cpu")
    conversation = Conversation(Decoder(model), Sampling(temperature=0), tokenizer.eos_id, max_new_tokens=5)
    replies = [tokenizer.decode(list(conversation.reply(tokenizer.encode(line + "\n"))))
               for line in lines.splitlines()]
    assert out == "".join(r if r.endswith("\n") else r + "\n" for r in replies)
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    main(argv)
    assert capsys.readouterr().out == out


def test_streamed_prompt_still_works(run_dir, capsys):
    assert main(["generate", "--run", str(run_dir), "--prompt", "Line 9:", "--max-new-tokens", "4", "--seed", "2",
                 "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    main(["generate", "--run", str(run_dir), "--prompt", "Line 9:", "--max-new-tokens", "4", "--seed", "2",
          "--device", "cpu"])
    assert first.startswith("Line 9:") and capsys.readouterr().out == first


@pytest.mark.parametrize("extra, message", [
    (["--prompts-file", "missing.txt"], "prompts file missing.txt does not exist"),
    (["--out", "x.jsonl"], "--out and --batch-size go with --prompts-file"),
    (["--prompts-file", "p.txt", "--interactive"], "leave out --prompt and --interactive"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--dtype", "int8"], "--dtype must be auto or one of"),
])
def test_generate_mistakes_are_one_line_errors(run_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--run", str(run_dir), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_bad_prompts_file_lines_are_named(tmp_path):
    from hybridlm.generate import PromptsFileError, read_prompts

    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(PromptsFileError, match=r'p.jsonl line 2 has no "prompt" string'):
        read_prompts(bad)
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    with pytest.raises(PromptsFileError, match="line 2 is not JSON"):
        read_prompts(bad)


def test_verify_decode_rows_on_the_cpu():
    """The GPU decode section's greedy rows, tiny, with the PyTorch kernels: the decoder's tokens are the full
    forward's argmax, and seeded sampling repeats itself."""
    from hybridlm import verify
    from test_generation import small_model

    checks = verify.check_fast_decoding(torch.device("cpu"), kernels="torch", new_tokens=16,
                                        config=small_model("GAG", 6).config, prompt_lengths=(9, 5))
    assert [c.name.split(" (")[0] for c in checks] == ["greedy decoder vs full forward", "seeded sampling reproducible",
                                                      "greedy decoder vs full forward"]
    assert all(c.ok for c in checks) and checks[2].error == 0.0 and "32/32 tokens its argmax" in checks[2].name


def test_verify_decode_rows_take_a_run(run_dir):
    from hybridlm import verify

    (check,) = verify.check_fast_decoding(torch.device("cpu"), kernels="torch", run=str(run_dir), new_tokens=8,
                                          dtypes=(torch.float32,), prompt_lengths=(20, 12))[:1]
    assert check.ok and f"run {run_dir}" in check.name and "16/16 tokens" in check.name


def test_generation_benchmark_runs_on_the_cpu(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_generate", ROOT / "bench" / "bench_generate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "cpu", "--presets", "tiny", "--windows", "none,8", "--batches", "1,2", "--prompts",
                "8,24", "--new-tokens", "4", "--no-cpu-row", "--out", str(tmp_path)])
    rows = jsonl((tmp_path / "bench_generate.jsonl").read_text())
    assert len(rows) == 8 and all("error" not in r and r["decode_tokens_per_s"] > 0 for r in rows)
    assert {(r["window"], r["batch"], r["prompt"]) for r in rows} == {
        (w, b, p) for w in ("none", "8") for b in (1, 2) for p in (8, 24)}
    out = capsys.readouterr().out
    assert out.splitlines()[-10].startswith("| preset | layout | window |")  # the table comes last
    assert (tmp_path / "decode_vs_context.png").stat().st_size > 0
    bench.main(["--plot", str(tmp_path / "bench_generate.jsonl"), "--plot-out", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").stat().st_size > 0
