"""DIR/sweep.json: the plan and each member's status, rewritten atomically after every change.

    {"format": 1, "kind": "lr" | "arch" | "grid", "created": ISO, "updated": ISO,
     "command": ["sweep", "arch", ...], "settings": {...}, "conditions": {...},
     "members": [{"name", "preset", "config_file", "overrides", "group", "swept", "lr_source",
                  "layout", "attention_fraction", "lr", "steps", "tokens", "params",
                  "planned_config", "config_sha256", "status", "error", "attempts", "device", "pid",
                  "started", "finished", "wall_s", "returncode", "resumed_from_step", "eval_status",
                  "eval_tasks", "eval_error"}, ...]}

preset / config_file / overrides are the member's recipe, for people; the member trains from
DIR/configs/NAME.toml (planned_config), written from that recipe when the plan is first saved, and
config_sha256 is the sha256 of that file: a file edited afterwards fails its member instead of
training it, and a rerun whose recipe now resolves to another config (an edited preset) is refused.

What a member still needs is decided from its run directory, not from the recorded status (a
killed sweep leaves "running" behind): results.json with the planned steps means done, a
checkpoint with optimizer state means resume, anything else means start afresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hybridlm.atomic_write import write_json_atomic, write_text_atomic
from hybridlm.config import Config, changed_keys, resolve
from hybridlm.errors import ConfigError, HybridLMError
from hybridlm.runs import RunDir
from hybridlm.sweep.plan import Member, SweepPlan, file_sha256

SWEEP_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
FORMAT = 1

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one sweep per directory is up to the user
    fcntl = None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sweep_file(out: Path) -> Path:
    return Path(out) / SWEEP_FILE


def is_sweep_dir(path: Path) -> bool:
    return sweep_file(path).is_file()


def read_sweep(out: Path) -> dict[str, Any] | None:
    path = sweep_file(out)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise HybridLMError(f"{path} is not valid JSON ({exc.msg}); fix or delete it") from None


def load_plan(out: Path) -> SweepPlan:
    """The plan stored in DIR/sweep.json (members with their last recorded status)."""
    data = read_sweep(out)
    if data is None:
        raise HybridLMError(f"{out} is not a sweep directory (no {SWEEP_FILE})")
    return SweepPlan(kind=data["kind"], out=Path(out), members=[Member.from_json(m) for m in data["members"]],
                     settings=data.get("settings", {}), conditions=data.get("conditions", {}))


def write_sweep(plan: SweepPlan, command: list[str] | None = None) -> Path:
    path = sweep_file(plan.out)
    previous = read_sweep(plan.out) or {}
    data = {
        "format": FORMAT,
        "kind": plan.kind,
        "created": previous.get("created") or now(),
        "updated": now(),
        "command": command if command is not None else previous.get("command"),
        "settings": plan.settings,
        "conditions": plan.conditions,
        "members": [m.to_json() for m in plan.members],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, data, indent=1)


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
            changed = [f for f in ("preset", "config_file", "overrides") if getattr(old, f) != getattr(member, f)]
            detail = "; ".join(f"{f}: {getattr(old, f)} -> {getattr(member, f)}" for f in changed)
            raise ConfigError(f"{plan.out}/{member.name} was planned with other settings ({detail}); rerun the "
                              "original command to continue that sweep, or use a new --out")
        member.planned_config, member.config_sha256 = old.planned_config, old.config_sha256
        differences = _planned_config_changes(plan, member)
        if differences:
            changed_configs.append((member, differences))
        for key in ("attempts", "device", "started", "finished", "wall_s", "returncode", "resumed_from_step",
                    "eval_status", "eval_tasks", "eval_error"):
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


def _write_config(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def _dotted(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


@dataclass(frozen=True)
class DiskState:
    """Where a member's run directory stands: done, resumable from a step, or not started."""

    action: str                 # "done" | "resume" | "fresh"
    step: int = 0


def disk_state(run_dir: Path, planned_steps: int | None) -> DiskState:
    run = RunDir(run_dir)
    results = read_json_or_none(run.results_file)
    if results is not None:
        r = results.get("results", {})
        if r.get("steps") == planned_steps or (r.get("stopped_early") and r.get("steps")):
            return DiskState("done", int(r.get("steps") or 0))
    if run.is_run():
        checkpoint = run.latest_resumable(on_skip=lambda *_: None, verify=False)  # train verifies on resume
        if checkpoint is not None:
            from hybridlm.runs.checkpoint import read_trainer_state

            try:
                step = int(read_trainer_state(checkpoint).get("step", 0))
            except (HybridLMError, ValueError):
                step = -1
            if step >= 0:
                return DiskState("resume", step)
    return DiskState("fresh")


def member_results(run_dir: Path) -> dict[str, Any]:
    """The "results" block of a member's results.json ({} before it has finished)."""
    return (RunDir(run_dir).read_results() or {}).get("results", {})


def read_json_or_none(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or unreadable (a run still being written)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


class SweepLock:
    """One sweep process per directory: a second `sweep` on the same --out is refused, not interleaved.

    An flock dies with its process, so a killed sweep never leaves a stale lock behind."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.handle = None

    def __enter__(self) -> "SweepLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        if fcntl is not None:
            try:
                fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.handle.close()
                raise HybridLMError(f"another sweep is running in {self.path.parent}; wait for it or stop it "
                                    "first (rerunning afterwards continues where it stopped)") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            if fcntl is not None:
                fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
