"""The generation decoder on the CPU: greedy tokens equal greedy decoding by the full forward token for token
(float32), for every layout, with and without a sliding window that the ring buffer wraps; a batch of prompts
of different lengths equals each prompt alone; sampling is seeded and draws from the right distribution;
the repetition penalty follows CTRL's rule; eos stops each row; a conversation keeps its state; the FLA
decode-step kernels are called by their contract."""

from __future__ import annotations

import pytest
import torch

from hybridlm.config import ModelConfig
from hybridlm.config.model_config import AttentionConfig
from hybridlm.model import HybridLM
from hybridlm.model.conversation import Conversation
from hybridlm.model.decoder import Decoder
from hybridlm.model.generation import generate_batch, generate_tokens
from hybridlm.model.sampling import Sampling, filter_logits, penalise_repetitions, sample

pytestmark = pytest.mark.usefixtures("single_torch_thread")

GREEDY = Sampling(temperature=0)


def small_model(layout: str, window: int | None = None, seed: int = 0, **kwargs) -> HybridLM:
    attention = dict(num_heads=4, num_kv_heads=kwargs.pop("num_kv_heads", 2), window_size=window,
                     qkv_bias=kwargs.pop("qkv_bias", False))
    base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=len(layout), num_heads=2, head_dim=16,
                intermediate_size=64, layout=layout, kernels="torch", attention=AttentionConfig(**attention))
    base.update(kwargs)
    torch.manual_seed(seed)
    model = HybridLM(ModelConfig(**base)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("_proj.bias"):
                p.normal_(0, 0.5)  # FLA's init zeroes them: make the biases count
    return model


def full_forward_greedy(model: HybridLM, prompt: list[int], new_tokens: int, penalty: float = 1.0) -> list[int]:
    """The reference: the whole sequence through the model at every step (no cache), argmax of the last
    position (after CTRL's penalty on the tokens so far)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(new_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1]
            if penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[ids] = True
                logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def prompts_of(lengths, vocab: int = 97, seed: int = 1) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]


LAYOUTS = [
    pytest.param("GGG", None, {}, id="gdn"),
    pytest.param("GAG", None, {}, id="hybrid"),
    pytest.param("AAA", None, {}, id="transformer-gqa"),
    pytest.param("GAG", 6, {}, id="hybrid-window-ring"),
    pytest.param("AAA", 6, {}, id="transformer-window-ring"),
    pytest.param("AGA", 5, dict(num_kv_heads=4), id="mha-window-ring"),
    pytest.param("GA", 6, dict(qkv_bias=True), id="qkv-bias"),
    pytest.param("GG", None, dict(num_v_heads=4, expand_v=2.0), id="grouped-value-heads"),
    pytest.param("GA", None, dict(use_gate=False, allow_neg_eigval=True), id="no-gate-neg-eigval"),
    pytest.param("GG", None, dict(use_short_conv=False), id="no-short-conv"),
]


@pytest.mark.parametrize("layout, window, extra", LAYOUTS)
def test_greedy_decoder_equals_greedy_by_full_forward(layout, window, extra):
    """Five prompts of lengths 1 to 13 in one batch, padded to a bucket of 8 rows; 12 new tokens, so with a
    window of 5-6 the ring of the window wraps several times (13 + 12 > 6)."""
    model = small_model(layout, window, **extra)
    prompts = prompts_of((9, 4, 13, 1, 9))
    decoder = Decoder(model, buckets=(8,))
    batched = decoder.generate(prompts, 12, GREEDY)
    assert batched.shape == (5, 12)
    if window is not None:
        kv = next(layer for layer in decoder._slots[next(iter(decoder._slots))].cache.layers if hasattr(layer, "k"))
        assert kv.k.shape[2] == window  # the ring, not the whole length
    for prompt, row in zip(prompts, batched.tolist()):
        assert row == full_forward_greedy(model, prompt, 12)
        assert decoder.generate([prompt], 12, GREEDY)[0].tolist() == row  # alone == in the batch


def test_a_prefill_split_over_several_calls_is_the_same(monkeypatch):
    from hybridlm.model import decoder as decoder_module

    model = small_model("GAG", 6)
    prompts = prompts_of((9, 9, 9, 4))
    whole = Decoder(model).generate(prompts, 8, GREEDY)
    monkeypatch.setattr(decoder_module, "PREFILL_TOKENS", 20)  # two rows of 9 tokens a call
    assert torch.equal(Decoder(model).generate(prompts, 8, GREEDY), whole)


def test_model_generate_keeps_its_interface():
    model = small_model("GA")
    prompt = torch.tensor(prompts_of((5, 5)))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    assert out[0, 5:].tolist() == full_forward_greedy(model, prompt[0].tolist(), 6)
    assert torch.equal(model.generate(prompt, max_new_tokens=0), prompt)


def test_generate_tokens_streams_what_generate_returns():
    model = small_model("GAG", 4)
    prompt = torch.tensor(prompts_of((7, 7)))
    streamed = torch.stack(list(generate_tokens(model, prompt, 9, temperature=0)), dim=1)
    assert torch.equal(streamed, model.generate(prompt, 9, temperature=0)[:, 7:])
    assert torch.is_grad_enabled()


def test_generate_batch_sorts_by_length_and_returns_in_order():
    model = small_model("GAG")
    prompts = prompts_of((3, 11, 1, 7, 5))
    results = generate_batch(model, prompts, 6, GREEDY, batch_size=2)
    assert [r.tokens for r in results] == [full_forward_greedy(model, p, 6) for p in prompts]
    assert {r.stop for r in results} == {"length"}


def test_weights_changed_between_calls_are_seen():
    """The decoder keeps its cache and stacked decode weights between calls; they are restacked in place."""
    model = small_model("GG")
    decoder = Decoder(model)
    prompt = prompts_of((6,))
    decoder.generate(prompt, 5, GREEDY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    assert decoder.generate(prompt, 5, GREEDY)[0].tolist() == full_forward_greedy(model, prompt[0], 5)


# ------------------------------------------------------------------------------------------------ sampling
def test_seeded_sampling_is_reproducible_and_the_seed_matters():
    model = small_model("GAG", 6)
    prompts = prompts_of((8, 3))
    sampling = Sampling(temperature=1.0, top_k=40, top_p=0.9, repetition_penalty=1.3)
    decoder = Decoder(model)
    a = decoder.generate(prompts, 16, sampling, seed=3)
    b = Decoder(model).generate(prompts, 16, sampling, seed=3)
    c = decoder.generate(prompts, 16, sampling, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    tokens = torch.stack(list(generate_tokens(model, torch.tensor(prompts[:1]), 16, 1.0, 40, 0.9, seed=3,
                                              repetition_penalty=1.3)), 1)
    assert torch.equal(tokens, Decoder(model).generate(prompts[:1], 16, sampling, seed=3))


def test_the_draw_follows_the_filtered_distribution():
    """The exponential race picks token i with probability p_i: 40,000 draws from one row's logits."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0]).repeat(40_000, 1)
    gen = torch.Generator().manual_seed(0)
    draws = sample(logits, Sampling(temperature=0.7), gen)
    freq = torch.bincount(draws, minlength=6).double() / draws.numel()
    assert (freq - (logits[0] / 0.7).softmax(-1).double()).abs().max() < 0.01
    top2 = sample(logits, Sampling(temperature=1.0, top_k=2), gen)
    assert set(top2.tolist()) == {0, 1}
    nucleus = sample(logits, Sampling(temperature=1.0, top_p=0.6), gen)  # p = .55, .20, ...: the first two
    assert set(nucleus.tolist()) == {0, 1}


def test_top_k_one_and_tiny_top_p_are_greedy():
    from hybridlm.model.generation import sample_next

    logits = torch.randn(4, 50)
    assert torch.equal(sample_next(logits, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6), logits.argmax(-1))
    kept = filter_logits(logits, 5, None)
    assert (torch.isfinite(kept).sum(-1) == 5).all()


def test_repetition_penalty_is_ctrls_rule():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert torch.equal(penalise_repetitions(logits, seen, 2.0), torch.tensor([[1.0, -4.0, 3.0, -1.0]]))
    with pytest.raises(ValueError, match="needs the tokens seen"):
        sample(logits, Sampling(temperature=0, repetition_penalty=1.5))
    with pytest.raises(ValueError, match="repetition_penalty"):
        Sampling(repetition_penalty=0)


@pytest.mark.parametrize("layout", ["GAG", "GG"])
def test_greedy_with_repetition_penalty_equals_the_reference(layout):
    """The penalty counts the prompt and every generated token of the row (and only of that row)."""
    model = small_model(layout, 6)
    prompts = prompts_of((8, 2, 5))
    out = Decoder(model).generate(prompts, 14, Sampling(temperature=0, repetition_penalty=3.0))
    for prompt, row in zip(prompts, out.tolist()):
        assert row == full_forward_greedy(model, prompt, 14, penalty=3.0)


# ------------------------------------------------------------------------------------------------------ eos
def test_each_row_stops_at_its_own_eos_and_the_output_is_trimmed():
    model = small_model("GAG")
    prompts = prompts_of((6, 9))
    free = Decoder(model).generate(prompts, 12, GREEDY)
    eos = free[0, 3].item()
    stops = [row.index(eos) if eos in row else None for row in free.tolist()]
    decoder = Decoder(model, eos_check_every=5)
    out = decoder.generate(prompts, 12, GREEDY, eos_token_id=eos)
    assert out.shape[1] == (12 if None in stops else max(stops) + 1)
    for row, free_row, stop in zip(out.tolist(), free.tolist(), stops):
        end = len(row) if stop is None else stop + 1
        assert row[:end] == free_row[:end] and all(t == eos for t in row[end:])


def test_generation_stops_soon_after_every_row_has_finished(monkeypatch):
    model = small_model("GG")
    prompts = prompts_of((4, 4))
    eos = Decoder(model).generate(prompts, 1, GREEDY)[:, 0]
    if eos[0] != eos[1]:  # find prompts whose first tokens agree
        prompts = [prompts[0], prompts[0]]
        eos = Decoder(model).generate(prompts, 1, GREEDY)[:, 0]
    decoder = Decoder(model, eos_check_every=4)
    steps = []
    original = Decoder.step
    monkeypatch.setattr(Decoder, "step", lambda self, slot: (steps.append(1), original(self, slot)))
    out = decoder.generate(prompts, 100, GREEDY, eos_token_id=int(eos[0]))
    assert out.shape == (2, 1) and len(steps) == 3  # the host looks at step 4 only


def test_bad_prompts_are_one_line_errors():
    decoder = Decoder(small_model("G"))
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        decoder.generate([[1, 2], []], 3)
    with pytest.raises(ValueError, match="token id 97, outside the vocabulary 0..96"):
        decoder.generate([[1, 97]], 3)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decoder.generate([[1]], 0)
    with pytest.raises(ValueError, match="CUDA graphs need a model on a CUDA device"):
        Decoder(small_model("G"), cuda_graphs=True)


# ------------------------------------------------------------------------------------------- conversation
@pytest.mark.parametrize("layout, window", [("GAG", None), ("GAG", 8), ("AA", None)])
def test_conversation_keeps_its_state_between_turns(layout, window):
    """Turn after turn equals one greedy run of the full forward over the whole conversation; without a window
    the second turn outgrows the first 256 slots, so the buffer doubles in the middle of the conversation."""
    model = small_model(layout, window)
    conversation = Conversation(Decoder(model), GREEDY, max_new_tokens=20)
    history: list[int] = []
    for turn in prompts_of((5, 240, 3)):
        reply = list(conversation.reply(turn, max_new_tokens=7 if len(turn) < 10 else 20))
        assert reply == full_forward_greedy(model, history + turn, len(reply))
        history += turn + reply
    assert conversation.length == len(history) - 1  # the last token waits for the next turn
    if window is None:
        assert conversation.slot.cache.capacity == 512


def test_conversation_reply_stops_at_eos():
    model = small_model("GA")
    prompt = prompts_of((5,))[0]
    eos = full_forward_greedy(model, prompt, 3)[2]
    conversation = Conversation(Decoder(model), GREEDY, eos_token_id=eos, max_new_tokens=10)
    reply = list(conversation.reply(prompt))
    assert eos not in reply and len(reply) == full_forward_greedy(model, prompt, 3).index(eos)


# -------------------------------------------------------------------------- FLA's decode kernels, by contract
def _fake_fla_recurrent_kernel(calls: list):
    """FLA's fused recurrent kernel as its contract reads (gates fused: g = -exp(A_log) softplus(g + dt_bias),
    beta = sigmoid(beta) x2 with ALLOW_NEG_EIGVAL, q/k l2-normalised, state h0 read and ht written, [K, V]),
    computed with the naive reference recurrence."""
    from hybridlm.ops.gdn_torch import naive_gated_delta_rule

    class Launcher:
        def __getitem__(self, grid):
            def launch(**kw):
                calls.append((grid, kw))
                assert all(kw[name].is_contiguous() for name in ("q", "k", "v", "g", "beta"))
                assert not kw["STATE_V_FIRST"] and kw["IS_BETA_HEADWISE"] and kw["APPLY_BETA_SIGMOID"]
                g = -kw["A_log"].float().exp() * torch.nn.functional.softplus(kw["g"].float() + kw["dt_bias"].float())
                beta = kw["beta"].float().sigmoid() * (2.0 if kw["ALLOW_NEG_EIGVAL"] else 1.0)
                o, state = naive_gated_delta_rule(kw["q"], kw["k"], kw["v"], g, beta, kw["scale"], kw["h0"], True,
                                                  kw["USE_QK_L2NORM_IN_KERNEL"])
                kw["o"].copy_(o)
                kw["ht"].copy_(state)
            return launch

    return Launcher()


@pytest.mark.parametrize("neg", (False, True))
def test_fla_gdn_step_launches_the_recurrent_kernel_in_place(monkeypatch, neg):
    pytest.importorskip("fla")
    import fla.ops.gated_delta_rule.fused_recurrent as fused_recurrent

    from hybridlm.ops.decode_step import fla_gdn_step, torch_gdn_step

    calls = []
    monkeypatch.setattr(fused_recurrent, "fused_recurrent_gated_delta_rule_fwd_kernel",
                        _fake_fla_recurrent_kernel(calls))
    gen = torch.Generator().manual_seed(0)
    b, h, hv, k, v = 3, 2, 4, 16, 12
    qkv = torch.randn(b, 1, 2 * h * k + hv * v, generator=gen)
    q, kk, vv = (t.reshape(b, 1, -1, d) for t, d in zip(qkv.split([h * k, h * k, hv * v], -1), (k, k, v)))
    gates = torch.randn(b, 1, 2 * hv, generator=gen)
    a, beta = gates[..., :hv], gates[..., hv:]
    A_log, dt_bias = torch.rand(hv, generator=gen), torch.randn(hv, generator=gen)
    state = torch.randn(b, hv, k, v, generator=gen)
    expected_state = state.clone()
    expected = torch_gdn_step(q, kk, vv, a, beta, A_log, dt_bias, neg, expected_state)
    pointer = state.data_ptr()
    o = fla_gdn_step(q, kk, vv, a, beta, A_log, dt_bias, neg, state)
    (grid, kw), = calls
    assert kw["h0"] is state and kw["ht"] is state and state.data_ptr() == pointer
    assert grid == (-(-v // kw["BV"]) * b * hv,) and kw["ALLOW_NEG_EIGVAL"] is neg and kw["scale"] == k ** -0.5
    torch.testing.assert_close(o, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, expected_state, atol=1e-5, rtol=1e-5)


def test_fla_short_conv_step_calls_conv_update_in_place(monkeypatch):
    pytest.importorskip("fla")
    import fla.modules.causal_conv1d as causal_conv1d

    from hybridlm.ops.decode_step import fla_short_conv_step, torch_short_conv_step

    def fake_update(x, cache, residual=None, weight=None, bias=None, activation=None):
        """FLA's contract: cache [N, D, W] shifted left by one with x appended (in place), y = act(sum(cache * w))."""
        assert weight.shape == cache.shape[1:] and activation == "silu"
        cache.copy_(torch.cat([cache[:, :, 1:], x[:, :, None]], -1))
        return torch.nn.functional.silu((cache * weight).sum(-1)), cache

    monkeypatch.setattr(causal_conv1d, "causal_conv1d_update", fake_update)
    x = torch.randn(2, 48)[:, 8:40]  # a strided slice, as the projection's q|k|v part is
    weight, state = torch.randn(32, 1, 4), torch.randn(2, 32, 4)
    expected_state = state.clone()
    expected = torch_short_conv_step(x, weight, expected_state)
    y = fla_short_conv_step(x, weight, state)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(state, expected_state)


def test_conv_steps_equal_the_whole_sequence_conv():
    from hybridlm.model.kernels import torch_short_conv
    from hybridlm.ops.decode_step import torch_short_conv_step

    x, weight = torch.randn(2, 7, 24), torch.randn(24, 1, 4)
    state = torch.zeros(2, 24, 4)
    steps = torch.stack([torch_short_conv_step(x[:, t], weight, state) for t in range(7)], dim=1)
    torch.testing.assert_close(steps, torch_short_conv(x, weight), atol=1e-6, rtol=1e-6)  # the same sums
    assert torch.equal(state, x[:, 3:].transpose(1, 2))


def test_kernel_record_picks_the_decode_step_kernels(monkeypatch):
    from hybridlm.model import fused
    from hybridlm.model.kernels import TORCH_KERNELS, _fla_kernels, resolve_kernels
    from hybridlm.ops import decode_step, gdn_fla

    assert TORCH_KERNELS.gdn_step is decode_step.torch_gdn_step
    assert TORCH_KERNELS.short_conv_step is decode_step.torch_short_conv_step
    monkeypatch.setattr(gdn_fla, "fla_usable", lambda device: (True, "faked for the test"))
    monkeypatch.setattr(fused, "load", lambda: {})
    _fla_kernels.cache_clear()
    try:
        for for_compile in (False, True):
            record = resolve_kernels("fla", "cpu", for_compile=for_compile)
            assert record.gdn_step is decode_step.fla_gdn_step
            assert record.short_conv_step is decode_step.fla_short_conv_step
            assert record.names["gdn_step"] == record.names["short_conv_step"] == "fla"
    finally:
        _fla_kernels.cache_clear()
