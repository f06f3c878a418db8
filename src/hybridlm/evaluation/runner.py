"""`evaluate`: score a model on benchmark tasks and return (and record) the metrics.

Every task goes the same way: documents from the first data source that has them (sources.py),
prompts as lm-eval builds them (tasks.py, fewshot.py), tokens as HFLM makes them (encoding.py),
log-likelihoods from the shared scorer (scoring.py), metrics with lm-eval's aggregations
(metrics.py). Per-document scores do not depend on batch size or --limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from pathlib import Path

from torch import nn

from hybridlm.errors import HybridLMError
from hybridlm.evaluation import metrics
from hybridlm.evaluation.encoding import Tokenizer, encode_pair
from hybridlm.evaluation.scoring import model_device, model_window, scoring_precision, score_requests
from hybridlm.evaluation.tasks import (
    LAST_WORD,
    MULTIPLE_CHOICE,
    PASSKEY,
    POSITION_LOSS,
    VALIDATION_PERPLEXITY,
    Example,
    TaskSpec,
    parse_tasks,
)

if TYPE_CHECKING:  # pragma: no cover
    from hybridlm.evaluation.passkey import PasskeySettings


def evaluate(model: nn.Module, tokenizer: Tokenizer, tasks: str | Sequence[str], limit: int | None = None,
             batch_size: int = 16, data_dir: str | Path | None = None, num_fewshot: int = 0,
             run_dir: str | Path | None = None, max_length: int | None = None, checkpoint: str | None = None,
             use_hub: bool = True, keep_samples: bool = False, progress: bool = False, save: bool = True,
             precision: str = "auto", position_bins: str | int = "log",
             passkey: PasskeySettings | None = None) -> dict:
    """Metrics of `model` on `tasks` ('arc_challenge,hellaswag' or a list).

    `limit`: score only the first N documents (N windows for val_ppl). `max_length`: the context
    window in tokens, default the model's `max_position_embeddings` -- what lm-eval's HFLM uses for
    the exported checkpoint, so `hybridlm eval` and `lm_eval --model hf` agree. With `run_dir` and
    `save`, the results are merged into DIR/eval.json. `precision`: auto (bf16 autocast on CUDA, float32
    on CPU) | fp32 | bf16, for the backbone; the LM head and log-softmax are always float32.
    Long-context tasks: `position_loss` scores windows of `max_length` tokens (default the trained
    seq_len) in `position_bins` ('log' or a width); `passkey` takes a `PasskeySettings` (default: 4K-64K
    up to the trained length); both see docs/long-context.md.
    """
    from hybridlm import __version__

    specs = parse_tasks(tasks)
    if limit is not None and limit < 1:
        raise HybridLMError(f"--limit must be a positive number of documents, got {limit}")
    if num_fewshot < 0:
        raise HybridLMError(f"--num-fewshot must be >= 0, got {num_fewshot}")
    if batch_size < 1:
        raise HybridLMError(f"--batch-size must be positive, got {batch_size}")
    window = max_length or model_window(model)
    common = {"checkpoint": checkpoint, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
              "max_length": window, "device": str(model_device(model)),
              "precision": scoring_precision(model_device(model), precision),  # fails on a bad value
              "data_dir": str(data_dir) if data_dir is not None else None, "hybridlm_version": __version__}
    results: dict = {"hybridlm_version": __version__, "date": _now(), "settings": common, "tasks": {}}
    for spec in specs:
        started = time.perf_counter()
        if spec.kind == VALIDATION_PERPLEXITY:
            if run_dir is None:
                raise HybridLMError("val_ppl needs the run directory (run_dir / --run) to rebuild its validation split")
            from hybridlm.evaluation.val_ppl import validation_perplexity

            entry = validation_perplexity(model, run_dir, batch_size=batch_size, limit=limit, progress=progress,
                                          precision=precision)
            entry["settings"] = {**common, "num_fewshot": 0, "date": _now()}
        elif spec.kind in (POSITION_LOSS, PASSKEY):
            entry = _long_context_task(model, tokenizer, spec, run_dir, checkpoint, limit, batch_size, max_length,
                                       precision, position_bins, passkey, progress)
            longest = entry["seq_len"] if spec.kind == POSITION_LOSS else max(entry["passkey"]["lengths"])
            entry["settings"] = {**common, "num_fewshot": 0, "max_length": longest, "date": _now()}
        else:
            entry = _score_task(model, tokenizer, spec, limit, batch_size, data_dir, num_fewshot, window,
                                use_hub, keep_samples, progress, precision)
            entry["settings"] = {**common, "fewshot_split": entry.pop("fewshot_split"),
                                 "fewshot_source": entry.pop("fewshot_source"), "date": _now()}
        entry["seconds"] = round(time.perf_counter() - started, 3)
        results["tasks"][spec.name] = entry
    if run_dir is not None and save:
        from hybridlm.evaluation.results import write_eval

        write_eval(run_dir, results)
    return results


def _long_context_task(model: nn.Module, tokenizer: Tokenizer, spec: TaskSpec, run_dir, checkpoint: str | None,
                       limit: int | None, batch_size: int, max_length: int | None, precision: str,
                       position_bins: str | int, passkey: PasskeySettings | None, progress: bool) -> dict:
    if spec.kind == POSITION_LOSS:
        if run_dir is None:
            raise HybridLMError("position_loss needs the run directory (run_dir / --run) to rebuild its validation "
                                "windows")
        from hybridlm.evaluation.position_loss import position_loss

        return position_loss(model, run_dir, bins=position_bins, seq_len=max_length, limit=limit,
                             batch_size=batch_size, precision=precision,
                             checkpoint=_checkpoint_path(run_dir, checkpoint), progress=progress)
    from hybridlm.evaluation.passkey import PasskeySettings, lengths_up_to
    from hybridlm.evaluation.passkey_score import score_passkey

    passkey = passkey or PasskeySettings()
    if not passkey.lengths:
        trained = _trained_length(run_dir) or max_length or model_window(model)
        passkey = replace(passkey, lengths=lengths_up_to(trained))
    if limit is not None:  # --limit N: at most N prompts per (length, depth)
        passkey = replace(passkey, samples=min(passkey.samples, limit))
    return score_passkey(model, tokenizer, passkey, batch_size=batch_size, precision=precision, progress=progress)


def _checkpoint_path(run_dir, checkpoint: str | None) -> Path | None:
    from hybridlm.errors import CheckpointError
    from hybridlm.runs import RunDir

    try:
        return RunDir(run_dir).resolve_checkpoint(checkpoint or "best")
    except CheckpointError:
        return None


def _trained_length(run_dir) -> int | None:
    if run_dir is None:
        return None
    from hybridlm.runs import RunDir, load_run_config

    return load_run_config(RunDir(run_dir)).data.seq_len


def _score_task(model: nn.Module, tokenizer: Tokenizer, spec: TaskSpec, limit: int | None, batch_size: int,
                data_dir: str | Path | None, num_fewshot: int, max_length: int, use_hub: bool,
                keep_samples: bool, progress: bool, precision: str) -> dict:
    from hybridlm.evaluation.fewshot import fewshot_pool, fewshot_prefixes
    from hybridlm.evaluation.sources import load_split

    loaded = load_split(spec, data_dir=data_dir, use_hub=use_hub)
    docs = loaded.docs[:limit] if limit else loaded.docs
    examples = [spec.to_example(doc) for doc in docs]
    fewshot_split = fewshot_source = None
    prefixes = [""] * len(examples)
    if num_fewshot > 0:
        pool = fewshot_pool(spec, data_dir, use_hub)
        fewshot_split, fewshot_source = pool.split, pool.source
        prefixes = fewshot_prefixes(pool.docs, [spec.to_example(d) for d in pool.docs], docs, num_fewshot,
                                    exclude_eval_doc=not spec.has_test_split)
    pairs = [(prefix + ex.query, cont) for prefix, ex in zip(prefixes, examples) for cont in ex.continuations]
    requests = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    scores = score_requests(model, requests, batch_size=batch_size, max_length=max_length, progress=progress,
                            precision=precision)
    per_doc, samples = _per_document(spec, examples, scores)
    values, errors = metrics.summarise(per_doc)
    if spec.kind == LAST_WORD:
        lls = [s["loglikelihood"] for s in samples]
        values["perplexity"], errors["perplexity"] = metrics.perplexity(lls), metrics.perplexity_stderr(lls)
    entry = {"metrics": values, "stderr": errors, "count": len(examples), "split": loaded.split,
             "source": loaded.source, "fewshot_split": fewshot_split, "fewshot_source": fewshot_source}
    if keep_samples:
        entry["samples"] = samples
    return entry


def _per_document(spec: TaskSpec, examples: list[Example], scores: list[tuple[float, bool]]):
    per_doc: dict[str, list[float]] = {"acc": []} if spec.kind == LAST_WORD else {"acc": [], "acc_norm": []}
    samples, cursor = [], 0
    for index, ex in enumerate(examples):
        doc_scores = scores[cursor:cursor + len(ex.continuations)]
        cursor += len(ex.continuations)
        lls = [ll for ll, _ in doc_scores]
        if spec.kind == MULTIPLE_CHOICE:
            result = metrics.multiple_choice_scores(lls, ex.choices, ex.gold)
            per_doc["acc"].append(result["acc"])
            per_doc["acc_norm"].append(result["acc_norm"])
            samples.append({"doc": index, "loglikelihoods": lls, "gold": ex.gold, **result})
        else:
            ll, greedy = doc_scores[0]
            per_doc["acc"].append(float(greedy))
            samples.append({"doc": index, "loglikelihood": ll, "is_greedy": greedy, "acc": float(greedy)})
    return per_doc, samples


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
