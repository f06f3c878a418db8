"""hybridlm models inside EleutherAI's lm-evaluation-harness: `lm_eval ... --model hybridlm`.

Importing this module registers the model name "hybridlm" with lm-eval (0.4.x has no plugin
discovery, hence `python -m hybridlm.evaluation.lm_eval_cli`, which imports it first). The class
answers lm-eval's three request types with hybridlm's own machinery: `loglikelihood` through the
same encoder and scorer as `hybridlm eval` (so both give identical numbers), rolling
log-likelihoods over lm-eval's own window helper, and greedy `generate_until` over the model's
recurrent cache.

    lm = HybridLMEvalModel(run="runs/tiny", checkpoint="best", device="cpu", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["arc_challenge"])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from hybridlm.evaluation.encoding import encode_pair
from hybridlm.evaluation.scoring import (inference_precision, model_device, model_window, scoring_precision,
                                         score_requests)

_log = logging.getLogger(__name__)
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256


@register_model("hybridlm")
class HybridLMEvalModel(LM):
    """A hybridlm run (or an in-memory model + tokenizer) as an lm-eval `LM`.

    model_args: run=DIR, checkpoint=best|final|latest|step_N|PATH, device=auto|cpu|cuda,
    batch_size=N, max_length=N (default the model's max_position_embeddings, as HFLM),
    max_gen_toks=N, precision=auto|fp32|bf16 (auto: bf16 autocast on CUDA, float32 on CPU).
    """

    def __init__(self, run: str | None = None, checkpoint: str = "best", device: str = "auto",
                 batch_size: int | str = DEFAULT_BATCH_SIZE, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, model: Any = None, tokenizer: Any = None,
                 precision: str = "auto", **ignored: Any) -> None:
        super().__init__()
        if ignored:
            _log.info("hybridlm: ignoring model arguments %s", sorted(ignored))
        if model is None:
            if run is None:
                raise ValueError("hybridlm needs model_args run=DIR (a hybridlm run directory)")
            from hybridlm.evaluation.cli import resolve_device
            from hybridlm.runs import find_run_dir, load_run

            run_dir, explicit = find_run_dir(run)
            model, tokenizer = load_run(run_dir.path, checkpoint=str(explicit or checkpoint),
                                        device=resolve_device(str(device or "auto")))
        elif tokenizer is None:
            raise ValueError("pass the tokenizer together with the model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.run = str(Path(run)) if run is not None else None
        self._max_length = int(max_length or model_window(model))
        self.batch_size = _parse_batch_size(batch_size)
        self.max_gen_toks = int(max_gen_toks)
        self.precision = scoring_precision(model_device(model), str(precision))  # fails early on a typo
        self._device = model_device(model)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> HybridLMEvalModel:
        """model_args win over the CLI's generic defaults (lm-eval always passes --batch_size 1)."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> HybridLMEvalModel:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------ properties
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        return int(self.tokenizer.eos_id)

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name", "hybridlm"))

    # ------------------------------------------------------------ requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.tokenizer, context, continuation) for context, continuation in
                 (req.args[:2] for req in requests)]
        results = score_requests(self.model, pairs, batch_size=self.batch_size, max_length=self.max_length,
                                 progress=not disable_tqdm, precision=self.precision)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihoods in disjoint windows of max_length (lm-eval's rolling scheme)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for index, req in enumerate(requests):
            tokens = self.tokenizer.encode(req.args[0])
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.eot_token_id,
                                                    max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(window))
                owners.append(index)
        scores = score_requests(self.model, windows, batch_size=self.batch_size, max_length=self.max_length,
                                progress=not disable_tqdm, precision=self.precision)
        totals = [0.0] * len(requests)
        for owner, (ll, _) in zip(owners, scores):
            totals[owner] += ll
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuation, cut at the first stop string."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        outputs = []
        eos_text = self.tokenizer.decode([self.eot_token_id])
        for req in requests:
            context, gen_kwargs = req.args[0], dict(req.args[1] or {})
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            text = self._generate(context, until, max_new, temperature)
            text = postprocess_generated_text(generation=text, stop=until, think_end_token=None)
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", req.args, text)
        return outputs

    def _generate(self, context: str, until: list[str], max_new: int, temperature: float) -> str:
        import torch

        from hybridlm.model.generation import generate_tokens

        ids = self.tokenizer.encode(context) or [self.eot_token_id]
        keep = max(1, self.max_length - max_new)  # HFLM keeps the last max_length - max_gen_toks context tokens
        input_ids = torch.tensor([ids[-keep:]], dtype=torch.long, device=self._device)
        generated: list[int] = []
        with torch.no_grad(), inference_precision(self._device, self.precision):
            for token in generate_tokens(self.model, input_ids, max_new, temperature=temperature,
                                         eos_token_id=self.eot_token_id):
                if int(token[0]) == self.eot_token_id:
                    break
                generated.append(int(token[0]))
                text = self.tokenizer.decode(generated)
                if any(stop and stop in text for stop in until):
                    break
        return self.tokenizer.decode(generated)


def _parse_batch_size(value: int | str) -> int:
    """lm-eval's 'auto' / 'auto:N' have no meaning here; they give the default batch size."""
    if isinstance(value, str) and value.startswith("auto"):
        return DEFAULT_BATCH_SIZE
    size = int(value)
    if size < 1:
        raise ValueError(f"batch_size must be positive, got {value}")
    return size
