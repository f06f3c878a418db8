"""The config file each member trains from: DIR/configs/NAME.toml, written once, checked ever after.

When a plan is first saved, each valid member's resolved config is written there and its sha256
recorded in sweep.json. A file edited afterwards fails its member instead of training it; a rerun
whose recipe now resolves to another config (an edited preset or --config file) is refused. So
editing a preset later can never change an unstarted member, and `hybridlm train --config
DIR/configs/NAME.toml` reruns a member by hand.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from hybridlm.atomic_write import write_text_atomic
from hybridlm.config import RESUME_SAFE_KEYS, Config, changed_keys, resolve
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.runs import RunDir, load_run_config
from hybridlm.runs.writer import LOCK_FILE, RUN_ARTIFACTS
from hybridlm.sweep.state import Member, SweepPlan, file_sha256, read_sweep, sweep_file

# what a failed attempt may leave in a member directory (anything else is not ours to delete)
LEFTOVERS = {"train.log", "eval.log", "train_error.txt", "eval_error.txt", LOCK_FILE, *RUN_ARTIFACTS}
# where a member's own config.toml may differ from its planned file: filled in by training (the
# tokenizer's vocab size, the FLA clone in use), or settings that never change the experiment
FILLED_IN_OR_SAFE = {"model.vocab_size", *RESUME_SAFE_KEYS}
CARRIED_OVER = ("attempts", "device", "started", "finished", "wall_s", "timing", "returncode", "resumed_from_step",
                "eval_status", "eval_tasks", "eval_error")


def merge_with_previous(plan: SweepPlan) -> None:
    """Carry statuses of a rerun's members over from sweep.json; refuse a member planned differently.

    Members that kept their name must keep their preset and overrides, and their recipe must still
    resolve to the config planned in configs/NAME.toml: the directory holds a run of that exact
    config, and resuming or ranking it under another config would mix two experiments."""
    data = read_sweep(plan.out)
    if data is None:
        return
    if data.get("kind") != plan.kind:
        raise ConfigError(f"{plan.out} holds a `sweep {data.get('kind')}`, not a `sweep {plan.kind}`; "
                          "choose another --out")
    previous = {m["name"]: Member.from_json(m) for m in data.get("members", [])}
    changed_configs: list[tuple[Member, list[str]]] = []
    for member in plan.members:
        old = previous.get(member.name)
        if old is None:
            continue
        if not member.same_plan(old):
            changed = [f for f in ("preset", "config_file", "overrides", "nproc") if getattr(old, f) != getattr(member, f)]
            detail = "; ".join(f"{f}: {getattr(old, f)} -> {getattr(member, f)}" for f in changed)
            raise ConfigError(f"{plan.out}/{member.name} was planned with other settings ({detail}); rerun the "
                              "original command to continue that sweep, or use a new --out")
        member.planned_config, member.config_sha256 = old.planned_config, old.config_sha256
        differences = _planned_config_changes(plan, member)
        if differences:
            changed_configs.append((member, differences))
        for key in CARRIED_OVER:
            setattr(member, key, getattr(old, key))
        if member.error is None:
            member.status, member.error = old.status, old.error
    if changed_configs:
        member, differences = changed_configs[0]
        others = [m.name for m, _ in changed_configs[1:]]
        also = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        also = f" ({also} changed too)" if others else ""
        raise ConfigError(f"{plan.out}/{member.name} was planned as {plan.config_path(member)}, but its recipe now "
                          f"resolves differently: {'; '.join(differences[:4])}{also}; a preset or --config file "
                          "changed since the sweep was planned. Undo that change to continue this sweep, or plan "
                          "the new config as a new sweep with another --out")


def _planned_config_changes(plan: SweepPlan, member: Member) -> list[str]:
    """How the config the member's recipe resolves now differs from its planned file ([] if it does not).

    A file that is missing or no longer matches its sha256 is not compared: the member fails when it
    would start (see `planned_config_problem`)."""
    if member.config_sha256 is None:
        return []
    path = plan.config_path(member)
    if not path.is_file() or file_sha256(path) != member.config_sha256:
        return []
    try:
        planned = resolve(file=path)
    except HybridLMError as exc:
        return [f"the planned file no longer resolves ({exc})"]
    if not member.valid:
        return [f"the config is now invalid ({member.error})"]
    now_resolved = member.build_config()
    return [f"{key} {_dotted(planned, key)!r} -> {_dotted(now_resolved, key)!r}"
            for key in changed_keys(planned, now_resolved)]


def record_member_configs(plan: SweepPlan) -> None:
    """Plan time: write DIR/configs/NAME.toml (the resolved config) and its sha256 for each new valid member.

    A member planned before keeps its file (`merge_with_previous` checked it against this command);
    one whose file was deleted gets it back only when its recipe still resolves to the very same text."""
    for member in plan.members:
        if not member.valid:
            continue
        path = plan.config_path(member)
        if member.config_sha256 is not None:
            if not path.is_file():
                text = member.build_config().to_toml()
                if hashlib.sha256(text.encode()).hexdigest() == member.config_sha256:
                    _write_config(path, text)
            continue
        member.planned_config = path.relative_to(plan.out).as_posix()
        _write_config(path, member.build_config().to_toml())
        member.config_sha256 = file_sha256(path)


def planned_config_problem(plan: SweepPlan, member: Member) -> str | None:
    """Why the member cannot start from its planned config file (None: the file is as planned)."""
    path = plan.config_path(member)
    if member.config_sha256 is None:
        return f"{path} was never planned (no config_sha256 in {sweep_file(plan.out)}); rerun the sweep command"
    if not path.is_file():
        return (f"{path} is missing; rerunning the sweep writes it again if the member's recipe still resolves "
                f"to the planned config (sha256 {member.config_sha256[:12]}...), else use a new --out")
    if file_sha256(path) != member.config_sha256:
        return (f"{path} was changed after planning (sha256 mismatch); delete it and rerun the sweep to have it "
                "written again from the recipe in sweep.json, or plan the change as a new sweep with another --out")
    return None


def load_planned_config(plan: SweepPlan, member: Member) -> Config:
    """The config the member trains from: its configs/NAME.toml, resolved as `train --config` does."""
    return resolve(file=plan.config_path(member))


def is_member_leftover(path: Path, config: Config) -> bool:
    """Only what this member's attempts leave may be deleted for a fresh start: the sweep's logs and the
    files of a training run whose config.toml is this member's planned `config` (another one is not ours)."""
    for entry in path.iterdir():
        if entry.name not in LEFTOVERS and not (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            return False
    run = RunDir(path)
    if not run.config_file.exists():
        return True
    try:
        saved = load_run_config(run)
    except HybridLMError:
        return False
    return all(key in FILLED_IN_OR_SAFE for key in changed_keys(config, saved))


def _write_config(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _dotted(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part, None)
    return value
