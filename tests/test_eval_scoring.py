"""The shared log-likelihood scorer: hand-computed answers, lm-eval's tokenisation, truncation, batching."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from test_eval_helpers import CharTokenizer, TableLM, gpt2, logp, tiny_hybrid

pytestmark = pytest.mark.usefixtures("single_torch_thread")

from hybridlm.errors import HybridLMError
from hybridlm.evaluation.encoding import encode_pair
from hybridlm.evaluation.scoring import score_requests


@pytest.mark.parametrize("with_head", [True, False])
def test_known_loglikelihoods_and_greedy(with_head):
    tok, model = CharTokenizer(), TableLM(with_head=with_head)
    pairs = [
        ("c", " a"),  # c->' ' (argmax), ' '->a (argmax): greedy
        ("c", " b"),  # ' '->b is not the argmax
        ("a", " bb"),  # a->' ', ' '->b (not argmax), b->b
        ("", "ab"),  # empty context: conditioned on <eos>
        ("ab ", "c"),  # trailing space moves to the continuation: scores b->' ', ' '->c
    ]
    scores = score_requests(model, [encode_pair(tok, c, x) for c, x in pairs], batch_size=2)
    expected = [
        (logp(("c", " "), (" ", "a")), True),
        (logp(("c", " "), (" ", "b")), False),
        (logp(("a", " "), (" ", "b"), ("b", "b")), False),
        (logp(("<eos>", "a"), ("a", "b")), False),
        (logp(("b", " "), (" ", "c")), False),
    ]
    for (ll, greedy), (want_ll, want_greedy) in zip(scores, expected):
        assert ll == pytest.approx(want_ll, abs=1e-5)
        assert greedy is want_greedy


def test_encode_pair_matches_lm_eval_template_lm():
    """Our encoder against lm-eval's own TemplateLM.loglikelihood tokenisation, on GPT-2."""
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import TemplateLM

    tok = gpt2()

    class Recorder(TemplateLM):
        eot_token_id = tok.eos_id

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            return tok.encode(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            self.seen = [(ctx, cont) for _, ctx, cont in requests]
            return [(0.0, False)] * len(requests)

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def generate_until(self, requests, disable_tqdm=False):
            raise NotImplementedError

    pairs = [("Question: Why?\nAnswer:", " Because."), ("The sky is  ", "blue"), ("", "Hello world"),
             ("", "<|endoftext|>tail"), ("A man is sitting on a roof. He", " is ripping level tiles off."),
             ("naïve café", " déjà vu"), ("x\n\n", "y"), ("cost:", " $5.00")]
    recorder = Recorder()
    recorder.loglikelihood([Instance("loglikelihood", {}, pair, 0) for pair in pairs], disable_tqdm=True)
    assert [encode_pair(tok, c, x) for c, x in pairs] == recorder.seen


@torch.no_grad()
def reference_score(model, context: list[int], continuation: list[int], max_length: int) -> tuple[float, bool]:
    """One request at a time, full logits, sliced as lm-eval's HFLM diagram says."""
    window = (context + continuation)[-(max_length + 1):][:-1]
    logits = model(torch.tensor([window])).logits[0]
    logp = F.log_softmax(logits.float(), dim=-1)[-len(continuation):]
    target = torch.tensor(continuation)
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def test_batched_truncated_scores_equal_one_at_a_time_reference():
    tok = gpt2()
    model = tiny_hybrid(tok.vocab_size)
    rng = random.Random(3)
    words = "the a cat sat on mat dog ran far away quick brown fox jumps over lazy".split()
    requests = []
    for _ in range(23):
        context = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        continuation = " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        requests.append(encode_pair(tok, context, continuation))
    max_length = 16  # many requests are longer: they are cut from the left
    assert any(len(c) + len(x) > max_length + 1 for c, x in requests)
    batched = score_requests(model, requests, batch_size=7, max_length=max_length)
    for (ctx, cont), (ll, greedy) in zip(requests, batched):
        want_ll, want_greedy = reference_score(model, ctx, cont, max_length)
        assert ll == pytest.approx(want_ll, abs=1e-4)
        assert greedy == want_greedy


def test_batch_size_does_not_change_scores():
    tok = gpt2()
    model = tiny_hybrid(tok.vocab_size, seed=1)
    texts = [("Question: What is the boiling point of water?\nAnswer:", f" {x}")
             for x in ("100 degrees", "cold", "it depends on the pressure of the air", "blue")]
    texts += [("Once upon a time there was a", " princess"), ("", "Standalone text.")]
    requests = [encode_pair(tok, c, x) for c, x in texts]
    one = score_requests(model, requests, batch_size=1)
    seven = score_requests(model, requests, batch_size=7)
    for (a, ga), (b, gb) in zip(one, seven):
        assert a == pytest.approx(b, abs=1e-4)
        assert ga == gb
    assert len({round(a, 3) for a, _ in one}) == len(one)  # the scores really differ per request


def test_answer_longer_than_window_is_a_one_line_error():
    tok, model = CharTokenizer(), TableLM()
    with pytest.raises(HybridLMError, match="raise --max-length") as info:
        score_requests(model, [encode_pair(tok, "c", " abab")], max_length=3)
    assert "\n" not in str(info.value)


def test_scores_are_finite_sums_of_negative_logprobs():
    tok, model = CharTokenizer(), TableLM()
    (ll, _), = score_requests(model, [encode_pair(tok, "cab", " c")])
    assert math.isfinite(ll) and ll < 0


def test_bf16_backbone_scores_close_to_fp32_with_float32_head():
    """precision=bf16 (the CUDA default) runs the backbone under autocast; the head and log-softmax stay
    float32, so per-answer log-likelihoods move by bf16 rounding only. A bad value is a one-line error."""
    tok = gpt2()
    model = tiny_hybrid(tok.vocab_size, seed=2)
    texts = [("Question: Which is a mammal?\nAnswer:", f" {x}") for x in ("whale", "shark", "trout")]
    requests = [encode_pair(tok, c, x) for c, x in texts]
    exact = score_requests(model, requests, precision="fp32")
    assert exact == score_requests(model, requests)  # auto on CPU is float32
    bf16 = score_requests(model, requests, precision="bf16")
    for (a, _), (b, _) in zip(exact, bf16):
        assert b == pytest.approx(a, rel=2e-2) and b != a
    assert next(model.parameters()).dtype == torch.float32  # autocast never touches the weights
    with pytest.raises(HybridLMError, match="precision must be one of auto, fp32, bf16"):
        score_requests(model, requests, precision="fp16")
