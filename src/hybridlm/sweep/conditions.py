"""Equal conditions: every member of a sweep sees the same tokens, validation batches and seeds.

A comparison of val losses means something only when the members trained on the same token
budget (steps x batch x grad_accum x seq_len), in the same data order (data.* and the seeds), and
were scored on the same fixed validation batches (data.*, train.batch_size, train.eval_batches).
`check_equal_conditions` refuses a plan whose members differ in any of these, unless the key is
what the sweep varies (e.g. `--set-grid train.batch_size=[8,16]`).
"""

from __future__ import annotations

from typing import Any

from hybridlm.config import Config
from hybridlm.errors import ConfigError

# train.* keys that decide the token budget, the data order or the validation batches
TRAIN_CONDITION_KEYS = ("train.max_steps", "train.batch_size", "train.grad_accum", "train.eval_batches",
                        "train.seed")
# data.* keys that change neither the tokens nor their order
DATA_KEYS_WITHOUT_EFFECT = ("data.cache_dir", "data.num_workers")
# keys that always differ or never matter for a comparison
IGNORED_PREFIXES = ("run.", "fla.", "train.device", "train.tensorboard", "train.wandb_project",
                    "train.log_interval", "train.save_interval", "train.keep_checkpoints")
LAYOUT_KEYS = ("model.layout", "model.attention_layers")


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; nested sections (model.attention) are dotted too."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def is_condition_key(key: str) -> bool:
    if key.startswith("data."):
        return key not in DATA_KEYS_WITHOUT_EFFECT
    return key in TRAIN_CONDITION_KEYS


def token_budget(config: Config) -> int:
    t = config.train
    return t.max_steps * t.batch_size * t.grad_accum * config.data.seq_len


def check_equal_conditions(configs: dict[str, Config], swept_keys: set[str]) -> dict[str, Any]:
    """Raise ConfigError when members differ in a condition that is not swept; else describe the sweep.

    Returns {"token_budget", "steps", "batch_size", "grad_accum", "seq_len", "eval_batches",
    "seed", "data", "swept", "also_differs"}: values shared by all members, "varies" for swept ones.
    """
    if not configs:
        return {}
    flats = {name: flatten(config.to_dict()) for name, config in configs.items()}
    keys = sorted(set().union(*flats.values()))
    swept = set(swept_keys)
    if swept & set(LAYOUT_KEYS):
        swept |= set(LAYOUT_KEYS)  # setting one spelling of the layout clears the other
    differing = [k for k in keys if len({repr(f.get(k)) for f in flats.values()}) > 1]
    refused = [k for k in differing if is_condition_key(k) and not _is_swept(k, swept)]
    if refused:
        key = refused[0]
        shown = ", ".join(f"{name}: {flats[name].get(key)!r}" for name in list(flats)[:4])
        more = f" (and {len(refused) - 1} more keys)" if len(refused) > 1 else ""
        raise ConfigError(
            f"sweep members differ in {key} ({shown}){more}; members must share the token budget, data and "
            f"validation batches to be comparable. Give them one value with --set {key}=..., or sweep it "
            "explicitly with `hybridlm sweep grid --set-grid`")
    first_name, first = next(iter(configs.items()))
    budgets = {token_budget(c) for c in configs.values()}

    def shared(key: str) -> Any:
        return "varies" if key in differing else flats[first_name].get(key)

    return {
        "token_budget": budgets.pop() if len(budgets) == 1 else "varies",
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


def _is_swept(key: str, swept: set[str]) -> bool:
    """A key is swept if named exactly, or if a swept table contains it (model.attention -> .num_heads)."""
    return key in swept or any(key.startswith(s + ".") for s in swept)
