"""Few-shot prompts built the way lm-eval 0.4 builds them, so k-shot numbers compare too.

lm-eval draws each document's examples with one `random.Random(1234)` per task, in document
order, from the task's few-shot pool: the training split if the dataset has one, else validation,
else test. For tasks without a test split (HellaSwag, PIQA) it draws k+1 and drops the evaluated
document (compared as a whole record); for the others it draws k and keeps whatever comes. An
example renders as `query + " " + answer + "\\n\\n"`, and the examples precede the query. When the
preferred pool split is not available offline we fall back to the next one with a warning, and
eval.json records which split was used.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

from hybridlm.errors import DataError
from hybridlm.evaluation.sources import LoadedSplit, find_split
from hybridlm.evaluation.tasks import FEWSHOT_DELIMITER, TARGET_DELIMITER, Example, TaskSpec

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


def fewshot_pool(spec: TaskSpec, data_dir: str | Path | None, use_hub: bool = True) -> LoadedSplit:
    """The few-shot pool split lm-eval would use, or the next available one (with a warning)."""
    for position, split in enumerate(spec.fewshot_splits):
        found = find_split(spec, split, data_dir, use_hub)
        if found is not None:
            if position > 0:
                warnings.warn(f"{spec.name}: few-shot examples come from the {split} split because "
                              f"{spec.file_name(spec.fewshot_splits[0])} was not found; lm-eval would use "
                              f"the {spec.fewshot_splits[0]} split", stacklevel=2)
            return found
    raise DataError(f"no few-shot pool for {spec.name}: put {spec.file_name(spec.fewshot_splits[0])} "
                    "next to the evaluation file in --data-dir, or use --num-fewshot 0")


def fewshot_prefixes(pool_docs: list[dict], pool_examples: list[Example], eval_docs: list[dict], k: int,
                     exclude_eval_doc: bool, seed: int = FEWSHOT_SEED) -> list[str]:
    """The text placed before each evaluated document's query (lm-eval's ContextSampler order)."""
    if k <= 0:
        return [""] * len(eval_docs)
    n = len(pool_docs)
    if k + int(exclude_eval_doc) > n:
        raise DataError(f"--num-fewshot {k} needs more than the {n} documents of the few-shot pool")
    rnd = random.Random(seed)
    prefixes = []
    for doc in eval_docs:
        if exclude_eval_doc:
            # random.sample picks the same positions from range(n) as from an n-long list
            chosen = [i for i in rnd.sample(range(n), k + 1) if pool_docs[i] != doc][:k]
            if len(chosen) < k:  # the pool holds copies of the document: draw again without them
                rest = [i for i in range(n) if pool_docs[i] != doc]
                chosen = [rest[j] for j in rnd.sample(range(len(rest)), k)]
        else:
            chosen = rnd.sample(range(n), k)
        prefixes.append("".join(render_example(pool_examples[i]) for i in chosen))
    return prefixes


def render_example(example: Example) -> str:
    return example.query + TARGET_DELIMITER + example.fewshot_answer + FEWSHOT_DELIMITER
