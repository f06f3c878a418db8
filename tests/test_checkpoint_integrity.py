"""Checkpoint integrity: manifests and checksums, loaders that fail with one-line errors naming the bad file,
resume fallback past corrupt checkpoints, pruning, a full disk, non-finite weights, strict JSON."""

from __future__ import annotations

import errno
import json
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from hybridlm.atomic_write import write_json_atomic, write_text_atomic
from hybridlm.errors import CheckpointError, NonFiniteError
from hybridlm.runs import RunDir, load_run, load_run_config
from hybridlm.runs import checkpoint as ckpt
from hybridlm.runs import integrity
from hybridlm.runs.checkpoint import (MANIFEST_FILE, MODEL_FILE, OPTIMIZER_META, OPTIMIZER_TENSORS, RNG_FILE,
                                      TRAINER_STATE, load_model_weights, load_optimizer_state, read_trainer_state,
                                      restore_rng, save_checkpoint, verify_checkpoint)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ------------------------------------------------------------------------------------------------ helpers
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 4)])
        self.norm = nn.LayerNorm(4)
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x):
        return self.norm(self.layers[1](torch.relu(self.layers[0](x)))) * self.scale


def trained(seed: int = 0) -> tuple[Tiny, torch.optim.AdamW]:
    torch.manual_seed(seed)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 8)).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model, optimizer


def save(path: Path, step: int = 10, seed: int = 0) -> Path:
    model, optimizer = trained(seed)
    return save_checkpoint(path, model, optimizer, {"step": step})


def run_with_steps(root: Path, steps) -> RunDir:
    run = RunDir(root)
    run.checkpoints.mkdir(parents=True)
    for step in steps:
        save(run.checkpoint(run.step_name(step)), step=step, seed=step)
    return run


def changed(file: Path) -> None:
    """After changing a file in place: a fresh process would hash it again (the stat may not have moved)."""
    ckpt.forget_verified()


def flip_data_bit(file: Path) -> int:
    raw = bytearray(file.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    offset = 8 + header + (len(raw) - 8 - header) // 2  # inside the tensor data, not the header
    raw[offset] ^= 0x10
    file.write_bytes(bytes(raw))
    changed(file)
    return offset


def truncate(file: Path, keep: float = 0.5) -> tuple[int, int]:
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(int(size * keep))
    changed(file)
    return int(size * keep), size


def strict_loads(text: str):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


# ---------------------------------------------------------------------------------------------- manifest
@pytest.mark.parametrize("threaded", [False, True])
def test_manifest_lists_every_file_with_size_and_digest(tmp_path, monkeypatch, threaded):
    import xxhash

    if threaded:  # what large checkpoints do: hash on a background thread, many chunks per tensor
        monkeypatch.setattr(integrity, "_THREAD_MIN_BYTES", 0)
        monkeypatch.setattr(integrity, "_CHUNK", 64)
        monkeypatch.setattr(integrity, "_MAX_PENDING", 2)
    path = save(tmp_path / "step_000010")
    manifest = json.loads((path / MANIFEST_FILE).read_text())
    assert manifest["hash"] == "xxh3_128"
    assert set(manifest["files"]) == {MODEL_FILE, OPTIMIZER_TENSORS, OPTIMIZER_META, RNG_FILE, TRAINER_STATE}
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry["size"] == len(data)
        assert entry["xxh3_128"] == xxhash.xxh3_128(data).hexdigest()
    ckpt.forget_verified()
    assert verify_checkpoint(path) is True
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # the files load back exactly (our streaming writer is plain safetensors)
    model, optimizer = trained(1)
    load_model_weights(path, model)
    load_optimizer_state(path, optimizer)
    reference, reference_optimizer = trained(0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    assert torch.equal(optimizer.state_dict()["state"][0]["exp_avg"],
                       reference_optimizer.state_dict()["state"][0]["exp_avg"])


def test_checkpoint_without_manifest_is_accepted_unverified(tmp_path):
    path = save(tmp_path / "old")
    (path / MANIFEST_FILE).unlink()
    assert verify_checkpoint(path) is False
    model, optimizer = trained(1)
    load_model_weights(path, model)
    load_optimizer_state(path, optimizer)
    restore_rng(path)
    assert read_trainer_state(path)["step"] == 10


def test_bit_flip_in_tensor_data_is_detected(tmp_path):
    path = save(tmp_path / "step_000010")
    flip_data_bit(path / MODEL_FILE)
    with pytest.raises(CheckpointError, match=r"step_000010/model\.safetensors is corrupt \(checksum mismatch\)"):
        verify_checkpoint(path)
    model, _ = trained(1)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is corrupt \(checksum mismatch\)"):
        load_model_weights(path, model)


@pytest.mark.parametrize("name", [OPTIMIZER_TENSORS, RNG_FILE, MODEL_FILE])
def test_truncated_safetensors_file(tmp_path, name):
    path = save(tmp_path / "step_000040")
    kept, size = truncate(path / name)
    message = rf"step_000040/{name} is truncated \({kept} of {size} bytes\)"
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)
    model, optimizer = trained(1)
    load = {OPTIMIZER_TENSORS: lambda: load_optimizer_state(path, optimizer), RNG_FILE: lambda: restore_rng(path),
            MODEL_FILE: lambda: load_model_weights(path, model)}[name]
    with pytest.raises(CheckpointError, match=message):
        load()
    # without a manifest, safetensors' own error becomes a one-line CheckpointError naming the file
    (path / MANIFEST_FILE).unlink()
    with pytest.raises(CheckpointError, match=rf"step_000040/{name} cannot be read \(.*\); the file is corrupt") as err:
        load()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("manifest", [True, False])
def test_garbage_optimizer_json_and_trainer_state(tmp_path, manifest):
    path = save(tmp_path / "step_000010")
    if not manifest:
        (path / MANIFEST_FILE).unlink()
    (path / OPTIMIZER_META).write_text("{not json")
    size = (path / TRAINER_STATE).stat().st_size
    (path / TRAINER_STATE).write_bytes(b"\xff" * size)  # same size: only the checksum can tell
    changed(path)
    model, optimizer = trained(1)
    with pytest.raises(CheckpointError, match=rf"step_000010/{OPTIMIZER_META} ") as err:
        load_optimizer_state(path, optimizer)
    assert ("is truncated" if manifest else "is not valid JSON") in str(err.value)
    with pytest.raises(CheckpointError, match=rf"step_000010/{TRAINER_STATE} ") as err:
        read_trainer_state(path)
    assert ("is corrupt (checksum mismatch)" if manifest else "is corrupt (") in str(err.value)


@pytest.mark.parametrize("meta", [
    {"param_groups": []},                                     # torch: different number of groups
    {"param_groups": [{"lr": 1.0}]},                          # torch: KeyError 'params'
    {"param_groups": [{"params": [0, 1], "lr": 1e-3}]},       # torch: group size differs
    {"groups": []},                                           # ours: no param_groups
    [1, 2, 3],                                                # not an object
])
def test_structurally_wrong_optimizer_json(tmp_path, meta):
    path = save(tmp_path / "step_000010")
    (path / MANIFEST_FILE).unlink()
    (path / OPTIMIZER_META).write_text(json.dumps(meta))
    _, optimizer = trained(1)
    with pytest.raises(CheckpointError, match=rf"step_000010/{OPTIMIZER_META} "):
        load_optimizer_state(path, optimizer)


def test_optimizer_state_of_another_model_names_the_file(tmp_path):
    path = save(tmp_path / "step_000010")
    other = nn.Sequential(nn.Linear(8, 3), nn.Linear(3, 4), nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(other.parameters())
    with pytest.raises(CheckpointError, match=rf"step_000010/{OPTIMIZER_TENSORS} does not fit the model"):
        load_optimizer_state(path, optimizer)


def test_missing_file_listed_in_manifest(tmp_path):
    path = save(tmp_path / "step_000010")
    (path / RNG_FILE).unlink()
    message = rf"step_000010/{RNG_FILE} is missing \(listed in manifest\.json\); the checkpoint is incomplete"
    with pytest.raises(CheckpointError, match=message):
        verify_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        restore_rng(path)
    (path / TRAINER_STATE).unlink()
    with pytest.raises(CheckpointError, match=rf"step_000010/{TRAINER_STATE} is missing \(listed in manifest\.json\)"):
        read_trainer_state(path)


def test_each_file_is_hashed_once_per_process(tmp_path, monkeypatch):
    run = run_with_steps(tmp_path / "run", [10, 20])
    calls = []
    original = integrity._hash_file
    monkeypatch.setattr(integrity, "_hash_file", lambda file: calls.append((file.parent.name, file.name)) or original(file))
    # what this process wrote is known good: resuming it hashes nothing
    latest = run.latest_resumable()
    assert latest == run.checkpoint("step_000020") and calls == []
    # a fresh process: the resume sequence hashes each file of the chosen checkpoint exactly once
    ckpt.forget_verified()
    latest = run.latest_resumable()
    model, optimizer = trained(1)
    read_trainer_state(latest)
    load_model_weights(latest, model)
    load_optimizer_state(latest, optimizer)
    restore_rng(latest)
    verify_checkpoint(latest)
    assert len(calls) == len(set(calls))  # no file hashed twice
    assert sorted(name for parent, name in calls if parent == "step_000020") == sorted(
        [MODEL_FILE, OPTIMIZER_TENSORS, OPTIMIZER_META, RNG_FILE, TRAINER_STATE])
    assert [name for parent, name in calls if parent == "step_000010"] == [TRAINER_STATE]  # read to order by step


# ---------------------------------------------------------------------------------------- resume fallback
def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path):
    run = run_with_steps(tmp_path / "run", [10, 20, 30])
    truncate(run.checkpoint("step_000030") / OPTIMIZER_TENSORS)
    flip_data_bit(run.checkpoint("step_000020") / MODEL_FILE)
    messages = []

    def on_skip(bad, reason):  # what the trainer prints, once it knows where it resumes from
        messages.append(f"checkpoint {bad} is corrupt ({reason}); resuming from {{}} instead")

    latest = run.latest_resumable(on_skip=on_skip)
    assert latest == run.checkpoint("step_000010")
    messages = [m.format(latest) for m in messages]
    assert len(messages) == 2
    assert "step_000030 is corrupt (optimizer.safetensors is truncated" in messages[0]
    assert messages[0].endswith(f"resuming from {run.checkpoint('step_000010')} instead")
    assert "step_000020 is corrupt (model.safetensors is corrupt (checksum mismatch))" in messages[1]
    assert [p.name for p, _ in run.skipped] == ["step_000030", "step_000020"]
    # without on_skip: a warning naming both checkpoints
    with pytest.warns(UserWarning) as record:
        assert run.latest_resumable() == run.checkpoint("step_000010")
    assert len(record) == 2
    assert re.search(r"step_000030 is corrupt \(optimizer\.safetensors is truncated .*\); "
                     r"resuming from .*step_000010 instead", str(record[0].message))


def test_garbage_trainer_state_and_no_good_checkpoint(tmp_path):
    run = run_with_steps(tmp_path / "run", [10])
    (run.checkpoint("step_000010") / TRAINER_STATE).unlink()
    (run.checkpoint("step_000010") / MANIFEST_FILE).unlink()
    (run.checkpoint("step_000010") / TRAINER_STATE).write_text("{broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run.latest_resumable(on_skip=lambda *_: None) is None
    assert len(run.skipped) == 1 and "trainer_state.json is corrupt" in run.skipped[0][1]
    with pytest.raises(CheckpointError, match=r"has no resumable checkpoint .*step_000010: trainer_state\.json"):
        run.resolve_checkpoint("latest", on_skip=lambda *_: None)


def test_explicit_corrupt_checkpoint_is_an_error(tmp_path):
    run = run_with_steps(tmp_path / "run", [10, 20])
    flip_data_bit(run.checkpoint("step_000020") / MODEL_FILE)
    with pytest.raises(CheckpointError, match=r"step_000020/model\.safetensors is corrupt \(checksum mismatch\)"):
        run.resolve_checkpoint("step_000020")
    with pytest.raises(CheckpointError, match=r"step_000020/model\.safetensors is corrupt"):
        run.resolve_checkpoint(str(run.checkpoint("step_000020")))
    assert run.resolve_checkpoint("latest", on_skip=lambda *_: None) == run.checkpoint("step_000010")


# -------------------------------------------------------------------------------------------------- pruning
def test_pruning_keeps_the_newest_good_checkpoint(tmp_path):
    run = run_with_steps(tmp_path / "run", [10, 20, 30, 40])
    run.prune_step_checkpoints(3)
    assert [p.name for _, p in run.step_checkpoints()] == ["step_000020", "step_000030", "step_000040"]
    truncate(run.checkpoint("step_000040") / MODEL_FILE)
    (run.checkpoint("step_000030") / OPTIMIZER_META).unlink()
    run.prune_step_checkpoints(2)
    # the newest two are damaged: step_000020, the newest good one, survives as well
    assert [p.name for _, p in run.step_checkpoints()] == ["step_000020", "step_000030", "step_000040"]
    save(run.checkpoint("step_000050"), step=50)
    run.prune_step_checkpoints(2)
    assert [p.name for _, p in run.step_checkpoints()] == ["step_000040", "step_000050"]


# ------------------------------------------------------------------------------------------------ full disk
def test_disk_full_during_save_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
    run = run_with_steps(tmp_path / "run", [20, 40])
    target = run.checkpoint("step_000040")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    original = integrity._write_bytes

    def fill_disk(file, chunks, checksums, pool):
        if file.name == OPTIMIZER_TENSORS:
            with open(file, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(file, chunks, checksums, pool)

    monkeypatch.setattr(integrity, "_write_bytes", fill_disk)
    model, optimizer = trained(7)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(target, model, optimizer, {"step": 40})
    assert str(err.value) == (f"cannot write checkpoint {target}: No space left on device; "
                              "earlier checkpoints are intact")
    assert {p.name for p in run.checkpoints.iterdir()} == {"step_000020", "step_000040"}  # no .tmp-/.old- left
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    ckpt.forget_verified()
    assert verify_checkpoint(target) and verify_checkpoint(run.checkpoint("step_000020"))
    # a safetensors I/O error is reported the same way
    from safetensors import SafetensorError

    def safetensors_full(*args, **kwargs):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(integrity, "_write_bytes", safetensors_full)
    with pytest.raises(CheckpointError, match=r"step_000060: No space left on device; earlier checkpoints are intact"):
        save_checkpoint(run.checkpoint("step_000060"), model, optimizer, {"step": 60})
    assert {p.name for p in run.checkpoints.iterdir()} == {"step_000020", "step_000040"}


def test_write_text_atomic_removes_its_temporary_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"a": 1})
    original = Path.write_text

    def partial(self, text, *args, **kwargs):
        original(self, text[:3], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", partial)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(target, "something longer")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert json.loads(target.read_text()) == {"a": 1}


# ------------------------------------------------------------------------------------------- non-finite
def test_non_finite_weights_are_never_saved(tmp_path):
    model, optimizer = trained()
    with torch.no_grad():
        model.layers[1].weight[2, 3] = float("nan")
    target = tmp_path / "step_000010"
    with pytest.raises(NonFiniteError, match=rf"refusing to save {target}: model weights are non-finite "
                                             r"\(e\.g\. layers\.1\.weight\)"):
        save_checkpoint(target, model, optimizer, {"step": 10})
    assert list(tmp_path.iterdir()) == []
    model, optimizer = trained()
    model.scale[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"\(e\.g\. scale\)"):
        save_checkpoint(target, model, optimizer, {"step": 10})
    assert list(tmp_path.iterdir()) == []
    # huge but finite weights (their sum overflows) are fine
    model, optimizer = trained()
    with torch.no_grad():
        model.layers[0].weight.fill_(3e38)
    save_checkpoint(target, model, optimizer, {"step": 10})


def test_load_run_refuses_non_finite_weights(tmp_path, monkeypatch):
    from hybridlm.config import preset
    from hybridlm.model import HybridLM

    config = preset("tiny")
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    config.save(run.config_file)
    torch.manual_seed(0)
    model = HybridLM(config.model)
    save_checkpoint(run.checkpoint("step_000010"), model, None, {"step": 10})
    with torch.no_grad():
        model.model.layers[0].attn.q_proj.weight[0, 0] = float("inf")
    monkeypatch.setattr(ckpt, "first_non_finite", lambda tensors: None)  # as an older version would have saved
    save_checkpoint(run.checkpoint("final"), model, None, {"step": 20})
    monkeypatch.undo()
    with pytest.raises(NonFiniteError) as err:
        load_run(run.path, checkpoint="final")
    message = str(err.value)
    assert f"refusing to load {run.checkpoint('final') / MODEL_FILE}: model weights are non-finite" in message
    assert "(e.g. model.layers.0.attn.q_proj.weight)" in message
    assert "--checkpoint step_000010" in message


# ------------------------------------------------------------------------------------------------ strict JSON
def test_json_never_holds_nan_or_infinity(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"event": "train", "step": 1, "loss": float("nan"), "extra": [float("inf"), 1.5]})
    run.append_metrics({"event": "train", "step": 2, "loss": 2.0})
    lines = run.metrics_file.read_text().splitlines()
    assert strict_loads(lines[0]) == {"event": "train", "step": 1, "loss": None, "extra": [None, 1.5]}
    with run.metrics_file.open("a") as f:
        f.write('{"event": "train", "st')  # a line cut by a crash
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.truncate_metrics(after_step=1)
    assert strict_loads(run.metrics_file.read_text().strip())["loss"] is None
    write_json_atomic(tmp_path / "results.json", {"results": {"best": -math.inf, "list": (math.nan, 2)}})
    assert strict_loads((tmp_path / "results.json").read_text()) == {"results": {"best": None, "list": [None, 2]}}
    model, optimizer = trained()
    path = save_checkpoint(tmp_path / "ckpt", model, optimizer, {"step": 1, "best_val_loss": math.inf})
    assert strict_loads((path / TRAINER_STATE).read_text())["best_val_loss"] is None
    for name in (OPTIMIZER_META, MANIFEST_FILE):
        strict_loads((path / name).read_text())


def test_garbage_results_json(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_results() is None
    run.results_file.write_text('{"results": {"steps": 4')
    with pytest.raises(CheckpointError, match=rf"{run.results_file} is not valid JSON \(.*\); "
                                              "the checkpoints are unaffected"):
        run.read_results()


# ------------------------------------------------------------------------------------------------ config.toml
@pytest.mark.parametrize("text, section", [("", "model"),
                                           ("[model]\nhidden_size = 64\n[data]\nseq_len = 64\n", "train")])
def test_empty_or_incomplete_config_toml(tmp_path, text, section):
    run = RunDir(tmp_path)
    run.config_file.write_text(text)
    message = rf"{run.config_file} is empty or incomplete \(no \[{section}\] section\); the run directory is damaged"
    with pytest.raises(CheckpointError, match=message):
        load_run_config(run)
    with pytest.raises(CheckpointError, match=r"config\.toml is empty or incomplete"):
        load_run(tmp_path)
