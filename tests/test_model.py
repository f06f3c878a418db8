"""Whole-model numerics: cached decoding equals the full forward; the fused loss equals plain CE."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm.config import ModelConfig
from hybridlm.config.model_config import AttentionConfig
from hybridlm.model import HybridLM
from hybridlm.ops.cross_entropy import linear_cross_entropy


def small_config(layout: str, window: int | None = None, **kwargs) -> ModelConfig:
    base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=len(layout), num_heads=2, head_dim=16,
                intermediate_size=64, layout=layout, kernels="torch",
                attention=AttentionConfig(num_heads=4, num_kv_heads=2, window_size=window))
    base.update(kwargs)
    return ModelConfig(**base)


@pytest.mark.parametrize("layout, window, extra", [
    ("GGG", None, {}),                                  # pure GDN
    ("AAA", None, {}),                                  # pure attention (GQA 4 heads / 2 kv heads)
    ("GAG", None, {}),                                  # hybrid
    ("AGA", 5, {}),                                     # attention window smaller than the sequence
    ("GG", None, dict(num_v_heads=4, expand_v=2.0)),    # grouped value heads, wider values
    ("GA", None, dict(use_gate=False, allow_neg_eigval=True)),
])
def test_cached_decoding_matches_full_forward_float64(layout, window, extra):
    torch.manual_seed(0)
    model = HybridLM(small_config(layout, window, **extra)).double().eval()
    ids = torch.randint(0, 97, (2, 29))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        steps = torch.cat([model(ids[:, t:t + 1], cache=cache).logits for t in range(ids.shape[1])], dim=1)
        cache = model.new_cache()  # prefill in two pieces, the second longer than the window
        pieces = torch.cat([model(ids[:, :11], cache=cache).logits, model(ids[:, 11:], cache=cache).logits], 1)
    assert (steps - full).abs().max().item() <= 1e-9
    assert (pieces - full).abs().max().item() <= 1e-9
    assert cache.seen_tokens == 29


def test_attention_cache_is_a_ring_of_the_window():
    """With a window the buffer holds `window` slots whatever the length, written in place."""
    model = HybridLM(small_config("A", window=4)).double().eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 1)), cache=cache)
        pointer = cache.layers[0].k.data_ptr()
        for _ in range(10):
            model(torch.randint(0, 97, (1, 1)), cache=cache)
    assert cache.layers[0].k.shape == (1, 2, 4, 8) and cache.layers[0].k.data_ptr() == pointer


def test_attention_cache_without_window_is_preallocated_or_doubles():
    model = HybridLM(small_config("A")).eval()
    fixed = model.new_cache(batch_size=2, max_length=70)
    assert fixed.layers[0].k.shape == (2, 2, 128, 8)  # rounded up to 64 slots
    growing = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 300)), cache=growing)
        assert growing.layers[0].k.shape[2] == 512 and growing.version == 1
        model(torch.randint(0, 97, (1, 1)), cache=growing)
    assert growing.layers[0].k.shape[2] == 512 and growing.seen_tokens == 301


def test_gdn_decoding_state_has_constant_size_and_stays_in_place():
    model = HybridLM(small_config("G")).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 97, (1, 50)), cache=cache)
        layer = cache.layers[0]
        shapes, pointers = (layer.state.shape, layer.conv.shape), (layer.state.data_ptr(), layer.conv.data_ptr())
        model(torch.randint(0, 97, (1, 1)), cache=cache)
    assert (layer.state.shape, layer.conv.shape) == shapes
    assert (layer.state.data_ptr(), layer.conv.data_ptr()) == pointers
    assert shapes[0] == (1, 2, 16, 16) and shapes[1] == (1, 96, 4)  # q|k|v: 32 + 32 + 32 channels, kernel 4


def test_conv_state_holds_the_last_inputs_after_a_short_prefill():
    """A prompt shorter than the kernel leaves zeros in front of it, as the whole-sequence conv assumes."""
    torch.manual_seed(0)
    model = HybridLM(small_config("G")).double().eval()
    ids = torch.randint(0, 97, (1, 6))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        pieces = [model(ids[:, :2], cache=cache).logits, model(ids[:, 2:3], cache=cache).logits,
                  model(ids[:, 3:], cache=cache).logits]
    assert (torch.cat(pieces, 1) - full).abs().max().item() <= 1e-9


def test_chunked_loss_equals_plain_cross_entropy_and_its_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(3, 50, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1000, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 1000, (3, 50))
    targets[0, :7] = -100
    fused = linear_cross_entropy(hidden, weight, targets, chunk_rows=17)
    plain = F.cross_entropy((hidden @ weight.t()).reshape(-1, 1000), targets.reshape(-1), ignore_index=-100)
    assert abs(fused.item() - plain.item()) < 1e-12
    g_fused = torch.autograd.grad(fused, (hidden, weight))
    g_plain = torch.autograd.grad(plain, (hidden, weight))
    for a, b in zip(g_fused, g_plain):
        assert (a - b).abs().max().item() < 1e-12


def test_model_loss_without_logits_matches_logits_loss():
    torch.manual_seed(0)
    model = HybridLM(small_config("GA"))
    ids = torch.randint(0, 97, (2, 16))
    labels = torch.roll(ids, -1, dims=1)
    out = model(ids, labels=labels, return_logits=False)
    assert out.logits is None
    reference = F.cross_entropy(model(ids).logits.reshape(-1, 97), labels.reshape(-1))
    assert abs(out.loss.item() - reference.item()) < 1e-5


def test_generate_is_seeded_and_stops_at_eos():
    torch.manual_seed(0)
    model = HybridLM(small_config("GA"))
    prompt = torch.randint(0, 97, (2, 5))
    a = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    b = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=20, top_p=0.9, seed=3)
    assert a.shape == (2, 13) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)
    greedy = model.generate(prompt, max_new_tokens=4, temperature=0)
    eos = int(greedy[0, 5])
    stopped = model.generate(prompt[:1], max_new_tokens=10, temperature=0, eos_token_id=eos)
    assert stopped.shape[1] == 6 and int(stopped[0, -1]) == eos


def test_top_k_one_is_greedy():
    from hybridlm.model.generation import sample_next

    logits = torch.randn(4, 50)
    assert torch.equal(sample_next(logits, 1.0, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6), logits.argmax(-1))


def test_tied_embeddings_share_the_tensor():
    model = HybridLM(small_config("G", tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embeddings.weight
    assert model.num_parameters() == model.num_parameters(non_embedding=True) + 97 * 32


def test_fla_initialisation_ranges():
    torch.manual_seed(0)
    model = HybridLM(small_config("GA", hidden_size=64))
    gdn = model.model.layers[0].attn
    a = gdn.A_log.exp()
    assert (a > 0).all() and (a < 16).all()
    dt = torch.nn.functional.softplus(gdn.dt_bias)
    assert (dt >= 1e-4 - 1e-7).all() and (dt <= 0.1 + 1e-6).all()
    std = model.model.layers[0].mlp.up_proj.weight.std().item()
    assert 0.015 < std < 0.025
    assert torch.equal(model.model.norm.weight, torch.ones(64))


def test_fla_fused_loss_is_used_only_for_training_with_fla_kernels(monkeypatch):
    """On CUDA the training loss goes through FLA's fused linear CE (grad mode only); evaluation and
    kernels='torch' and float64 keep our chunked loss. FLA's kernel is replaced by plain CE (its contract),
    so the test proves the wiring and the vocabulary padding (97 rows -> 128)."""
    from hybridlm.model import fused

    calls = []

    def fake_fused_ce(hidden2d, targets1d, weight, bias, accumulate_grad_in_fp32):
        calls.append(hidden2d.shape)
        assert weight.shape[0] % fused.VOCAB_ALIGNMENT == 0 and bias.shape == weight.shape[:1]
        return F.cross_entropy(hidden2d @ weight.t() + bias, targets1d, ignore_index=-100)

    from dataclasses import replace

    from hybridlm.model.kernels import TORCH_KERNELS

    monkeypatch.setattr(fused, "load", lambda: {"linear_cross_entropy": fake_fused_ce})
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=16,
                         intermediate_size=64, layout="GA", attention=AttentionConfig(num_heads=2))
    model = HybridLM(config)
    model.use_kernels(replace(TORCH_KERNELS, linear_cross_entropy=fused.linear_cross_entropy))  # FLA's loss
    ids = torch.randint(0, 97, (2, 40))
    labels = torch.roll(ids, -1, 1)
    labels[:, -1] = -100
    with torch.no_grad():
        expected = model(ids, labels=labels, return_logits=False).loss
    assert calls == []  # no grad: chunked loss
    loss = model(ids, labels=labels, return_logits=False).loss
    assert calls == [(80, 32)] and abs(loss.item() - expected.item()) < 1e-5
    loss.backward()
    fused_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()
    model.use_kernels(TORCH_KERNELS)
    model(ids, labels=labels, return_logits=False).loss.backward()  # our chunked loss
    assert (fused_grad - model.lm_head.weight.grad).abs().max().item() < 1e-6  # padding rows drop out
    model.use_kernels(replace(TORCH_KERNELS, linear_cross_entropy=fused.linear_cross_entropy))
    model.double()(ids, labels=labels, return_logits=False)  # float64: FLA computes in float32 at most
    assert len(calls) == 1


def test_block_pre_mlp_residual_add_goes_through_the_fused_add_norm(monkeypatch):
    """On CUDA the pre-MLP residual add and norm go to FLA's rms_norm(residual=..., prenorm=True), as FLA's
    own blocks do (that is what makes our bf16 logits equal FLA's model bit for bit). FLA's kernel is
    replaced by its contract (sum in float32, normalise, y in the update's dtype, the sum in the residual's),
    so this proves the call and that fused and PyTorch paths return the same pair, also for autocast's mix of
    a bf16 update and a float32 residual. CPU tensors never take the fused path (`test_block_...` below)."""
    from hybridlm.model import fused
    from hybridlm.model.norm import RMSNorm

    calls = []

    def fake_rms_norm(x, weight, bias, residual=None, eps=1e-6, prenorm=False):
        calls.append((x.dtype, residual.dtype, prenorm))
        total = x.float() + residual.float()
        y = total * torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
        return y.to(x.dtype), total.to(residual.dtype)

    norm = RMSNorm(8)
    norm.weight.data.uniform_(0.5, 1.5)
    update, residual = torch.randn(2, 3, 8, dtype=torch.float64), torch.randn(2, 3, 8, dtype=torch.float64)
    expected_total = residual + update
    expected = norm(expected_total)  # the PyTorch path (CPU tensors never take the fused one)
    y, total = norm.add_and_norm(update, residual)
    assert calls == [] and torch.equal(total, expected_total) and torch.allclose(y, expected)
    monkeypatch.setattr(fused, "load", lambda: {"rms_norm": fake_rms_norm})
    y, total = fused.add_rms_norm(update, residual, norm.weight, norm.eps)
    assert calls == [(torch.float64, torch.float64, True)]
    assert torch.allclose(total, expected_total) and torch.allclose(y, expected)
    y, total = fused.add_rms_norm(update.bfloat16(), residual.float(), norm.weight, norm.eps)  # autocast's mix
    assert y.dtype == torch.bfloat16 and total.dtype == torch.float32
    assert torch.equal(total, residual.float() + update.bfloat16().float())


def test_block_forward_is_the_pre_norm_residual_formula():
    """The block's refactor around add_and_norm keeps x + attn(norm(x)), then + mlp(norm(.)), bit for bit."""
    from hybridlm.model.block import Block

    config = ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=16,
                         intermediate_size=64, layout="GA", attention=AttentionConfig(num_heads=2))
    torch.manual_seed(0)
    for layer_idx in (0, 1):
        block = Block(config, layer_idx).double()
        x = torch.randn(2, 10, 32, dtype=torch.float64)
        h = x + block.attn(block.attn_norm(x))
        assert torch.equal(block(x), h + block.mlp(block.mlp_norm(h)))
