"""DIR/sweep.json: the plan (its members) and each member's status, rewritten atomically after every change.

    {"format": 1, "kind": "lr" | "arch" | "grid", "created": ISO, "updated": ISO,
     "command": ["sweep", "arch", ...], "settings": {...}, "conditions": {...},
     "members": [{"name", "preset", "config_file", "overrides", "nproc", "group", "swept", "lr_source",
                  "layout", "attention_fraction", "lr", "steps", "tokens", "params", "unique_tokens", "epochs",
                  "planned_config", "config_sha256", "status", "error", "attempts", "device", "pid",
                  "started", "finished", "wall_s", "timing", "returncode", "resumed_from_step",
                  "eval_status", "eval_tasks", "eval_error"}, ...]}

preset / config_file / overrides are the member's recipe, for people; the member trains from
DIR/configs/NAME.toml (planned_config), written from that recipe when the plan is first saved, and
config_sha256 is the sha256 of that file (see `configs`). This module is the bottom of the sweep
package: it imports nothing else from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hybridlm.atomic_write import write_json_atomic
from hybridlm.config import Config, parse_assignment, resolve
from hybridlm.errors import HybridLMError

SWEEP_FILE = "sweep.json"
LOCK_FILE = ".sweep.lock"
FORMAT = 1
CONFIGS_DIR = "configs"                          # DIR/configs/NAME.toml: the config each member trains from
INVALID_CONFIG = "invalid config"
PLAN_FIELDS = ("name", "preset", "config_file", "overrides", "nproc")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, one sweep per directory is up to the user
    fcntl = None


@dataclass
class Member:
    """One run of the sweep: how to build its config, what it varies, and how far it got."""

    name: str
    preset: str | None
    config_file: str | None
    overrides: list[str]
    group: str                                   # model spec label; LR sweeps pick a best lr per group
    swept: dict[str, Any] = field(default_factory=dict)
    lr_source: str | None = None
    nproc: int = 1                               # processes (GPUs) per member: > 1 trains under torchrun
    # resolved from the config (None for a member whose config is invalid)
    layout: str | None = None
    attention_fraction: float | None = None
    lr: float | None = None
    steps: int | None = None
    tokens: int | None = None                    # the token budget: steps x batch x grad_accum x seq_len x nproc
    params: int | None = None
    # from the tokenised data (see `budget`): training tokens available and how often the budget reads them
    unique_tokens: int | None = None
    epochs: float | None = None
    # written when the plan is first saved: "configs/NAME.toml" (under DIR) and the sha256 of its text
    planned_config: str | None = None
    config_sha256: str | None = None
    # run status, kept up to date in sweep.json by the runner
    status: str = "planned"                      # planned | running | done | failed | interrupted
    error: str | None = None
    attempts: int = 0
    device: str | None = None
    pid: int | None = None
    started: str | None = None
    finished: str | None = None
    wall_s: float | None = None
    timing: dict[str, Any] | None = None         # the last training attempt: wall_s, train_s, overhead_s, worker
    returncode: int | None = None
    resumed_from_step: int | None = None
    eval_status: str | None = None               # None | done | failed
    eval_tasks: str | None = None
    eval_error: str | None = None

    def build_config(self) -> Config:
        """The recipe resolved now; at plan time this is written to configs/NAME.toml, which the member trains from."""
        return resolve(preset=self.preset, file=self.config_file, overrides=self.overrides)

    def train_args(self, out_dir: Path, config_path: Path | None = None) -> list[str]:
        """The `hybridlm train` command of this member: its planned config file into its directory.

        `config_path` defaults to the sweep's configs/NAME.toml next to `out_dir` (DIR/NAME). A clone
        named with `--set fla.path=...` is activated with `--fla-path`, as `train --set` would."""
        if config_path is None:
            config_path = Path(out_dir).parent / CONFIGS_DIR / f"{self.name}.toml"
        return ["train", "--config", str(config_path), "--out", str(out_dir), *self.fla_args()]

    def fla_args(self) -> list[str]:
        """`--fla-path CLONE` when the recipe names one: a fresh start and every resume activate it alike."""
        fla_path = next((value for key, value in map(parse_assignment, reversed(self.overrides))
                         if key == "fla.path"), None)
        return ["--fla-path", str(fla_path)] if fla_path else []

    @property
    def valid(self) -> bool:
        """False for a member whose config failed to resolve at plan time (it never runs)."""
        return not (self.error or "").startswith(INVALID_CONFIG)

    def same_plan(self, other: "Member") -> bool:
        return all(getattr(self, f) == getattr(other, f) for f in PLAN_FIELDS)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Member":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class SweepPlan:
    kind: str
    out: Path
    members: list[Member]
    settings: dict[str, Any]
    conditions: dict[str, Any]

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def member_dir(self, member: Member) -> Path:
        return self.out / member.name

    def config_path(self, member: Member) -> Path:
        """DIR/configs/NAME.toml: the resolved config the member trains from (written at plan time).

        Always derived from the name (member.planned_config only records it), so an edited sweep.json
        cannot point a member at a file outside the sweep."""
        return self.out / CONFIGS_DIR / f"{member.name}.toml"

    def train_args(self, member: Member) -> list[str]:
        return member.train_args(self.member_dir(member), self.config_path(member))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
