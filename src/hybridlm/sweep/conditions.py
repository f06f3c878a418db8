"""Equal conditions: every member of a sweep sees the same tokens, validation batches and seeds.

A comparison of val losses means something only when the members trained on the same token
budget (steps x batch x grad_accum x seq_len), in the same data order (data.* and the seeds), at
the same precision, and were scored on the same fixed validation batches (data.*,
train.batch_size, train.eval_batches).

`describe_conditions` says which of these differ between any set of configs (data, nothing
raised); `check_equal_conditions` refuses a sweep plan from that description, unless the key is
what the sweep varies (e.g. `--set-grid train.batch_size=[8,16]`), and `hybridlm compare` prints
the same description as a warning above its table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hybridlm.config import Config
from hybridlm.config.resolve import flatten
from hybridlm.errors import ConfigError

# train.* keys that decide the token budget, the data order, the numerics or the validation batches
TRAIN_CONDITION_KEYS = ("train.max_steps", "train.batch_size", "train.grad_accum", "train.eval_batches",
                        "train.seed", "train.precision")
# data.* keys that change neither the tokens nor their order
DATA_KEYS_WITHOUT_EFFECT = ("data.cache_dir", "data.num_workers")
# keys that always differ or never matter for a comparison
IGNORED_PREFIXES = ("run.", "fla.", "train.device", "train.tensorboard", "train.wandb_project",
                    "train.log_interval", "train.save_interval", "train.keep_checkpoints")
LAYOUT_KEYS = ("model.layout", "model.attention_layers")


def is_condition_key(key: str) -> bool:
    if key.startswith("data."):
        return key not in DATA_KEYS_WITHOUT_EFFECT
    return key in TRAIN_CONDITION_KEYS


def token_budget(config: Config) -> int:
    t = config.train
    return t.max_steps * t.batch_size * t.grad_accum * config.data.seq_len


# the key of the derived token budget in a ConditionDiff
TOKENS = "tokens"
BUDGET_KEYS = ("train.max_steps", "train.batch_size", "train.grad_accum", "data.seq_len")
NAMES_SHOWN = 6  # names listed per value in a description; the rest are counted


@dataclass(frozen=True)
class ConditionDiff:
    """One condition the configs disagree on: each distinct value with the names that have it."""

    key: str                                   # TOKENS or a dotted config key (data.seq_len)
    values: tuple[tuple[Any, tuple[str, ...]], ...]

    def describe(self) -> str:
        """'data.seq_len 64 (a, b) vs 128 (c)'."""
        return f"{self.key} " + " vs ".join(f"{format_condition_value(self.key, v)} ({_names(n)})"
                                            for v, n in self.values)


@dataclass
class ConditionReport:
    """What `describe_conditions` found; `unequal` is empty when the configs are comparable."""

    names: list[str]
    unequal: list[ConditionDiff] = field(default_factory=list)  # unswept conditions; TOKENS first if any
    swept: list[str] = field(default_factory=list)              # differing keys the caller said are varied
    also_differs: list[str] = field(default_factory=list)       # differing keys that are no condition
    summary: dict[str, Any] = field(default_factory=dict)       # shared values; see check_equal_conditions

    @property
    def equal(self) -> bool:
        return not self.unequal

    def config_keys(self) -> list[ConditionDiff]:
        """The unequal config keys, without the derived token budget."""
        return [d for d in self.unequal if d.key != TOKENS]


def describe_conditions(configs: dict[str, Config], swept_keys: set[str] | frozenset[str] = frozenset()
                        ) -> ConditionReport:
    """Which conditions differ between the named configs (other than `swept_keys`), as data."""
    if not configs:
        return ConditionReport(names=[])
    flats = {name: flatten(config.to_dict()) for name, config in configs.items()}
    keys = sorted(set().union(*flats.values()))
    swept = set(swept_keys)
    if swept & set(LAYOUT_KEYS):
        swept |= set(LAYOUT_KEYS)  # setting one spelling of the layout clears the other
    differing = [k for k in keys if len({repr(f.get(k)) for f in flats.values()}) > 1]
    refused = [k for k in differing if is_condition_key(k) and not _is_swept(k, swept)]
    budgets = {name: token_budget(c) for name, c in configs.items()}
    unequal = [ConditionDiff(k, _groups({n: f.get(k) for n, f in flats.items()})) for k in refused]
    if len(set(budgets.values())) > 1 and set(refused) & set(BUDGET_KEYS):
        unequal.insert(0, ConditionDiff(TOKENS, _groups(budgets)))
    first = flats[next(iter(flats))]

    def shared(key: str) -> Any:
        return "varies" if key in differing else first.get(key)

    summary = {
        "token_budget": next(iter(budgets.values())) if len(set(budgets.values())) == 1 else "varies",
        "steps": shared("train.max_steps"),
        "batch_size": shared("train.batch_size"),
        "grad_accum": shared("train.grad_accum"),
        "seq_len": shared("data.seq_len"),
        "eval_batches": shared("train.eval_batches"),
        "seed": shared("train.seed"),
        "data": {k.split(".", 1)[1]: shared(k) for k in keys
                 if k.startswith("data.") and k not in DATA_KEYS_WITHOUT_EFFECT},
        "swept": sorted(k for k in differing if _is_swept(k, swept)),
        "also_differs": sorted(k for k in differing if not _is_swept(k, swept) and not is_condition_key(k)
                               and not k.startswith(IGNORED_PREFIXES)),
    }
    return ConditionReport(names=list(configs), unequal=unequal, swept=summary["swept"],
                           also_differs=summary["also_differs"], summary=summary)


def check_equal_conditions(configs: dict[str, Config], swept_keys: set[str]) -> dict[str, Any]:
    """Raise ConfigError when members differ in a condition that is not swept; else describe the sweep.

    Returns {"token_budget", "steps", "batch_size", "grad_accum", "seq_len", "eval_batches",
    "seed", "data", "swept", "also_differs"}: values shared by all members, "varies" for swept ones.
    """
    report = describe_conditions(configs, swept_keys)
    refused = report.config_keys()
    if refused:
        diff = refused[0]
        value_of = {name: value for value, names in diff.values for name in names}
        shown = ", ".join(f"{name}: {value_of[name]!r}" for name in report.names[:4])
        more = f" (and {len(refused) - 1} more keys)" if len(refused) > 1 else ""
        raise ConfigError(
            f"sweep members differ in {diff.key} ({shown}){more}; members must share the token budget, data and "
            f"validation batches to be comparable. Give them one value with --set {diff.key}=..., or sweep it "
            "explicitly with `hybridlm sweep grid --set-grid`")
    return report.summary


def format_condition_value(key: str, value: Any) -> str:
    """A value as the warning shows it: tokens with thousands separators, strings quoted, None unset."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == TOKENS and isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def _groups(values: dict[str, Any]) -> tuple[tuple[Any, tuple[str, ...]], ...]:
    """{name: value} -> ((value, (names...)), ...), values in the order their first name appears."""
    groups: dict[str, tuple[Any, list[str]]] = {}
    for name, value in values.items():
        groups.setdefault(repr(value), (value, []))[1].append(name)
    return tuple((value, tuple(names)) for value, names in groups.values())


def _names(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _is_swept(key: str, swept: set[str]) -> bool:
    """A key is swept if named exactly, or if a swept table contains it (model.attention -> .num_heads)."""
    return key in swept or any(key.startswith(s + ".") for s in swept)
