"""Sliding-window attention without a KV cache (`hybridlm.ops.attention`): the FlexAttention path and its
cached block mask against the dense-mask reference, alone and inside the model; cached decoding unchanged.

The CPU has no FlexAttention backward in PyTorch 2.13, so here the flex path is checked forward only
(forced with `_use_flex`) and gradients go through the dense path a CPU run takes; `hybridlm verify`'s
"flex" section checks the flex gradients on a GPU.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from hybridlm import verify
from hybridlm.config import resolve
from hybridlm.model import HybridLM
from hybridlm.ops import attention as ops_attention
from hybridlm.ops.attention import attention_reference, causal_attention

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SEQ_LENS = (1, 17, 64, 130)  # 130: past one 128-block, ending in a partial block
WINDOWS = (1, 3, 16, "T-1", "T", None)


def window_for(window, t: int) -> int | None:
    return {"T-1": t - 1, "T": t}.get(window, window) if isinstance(window, str) else window


def cases():
    for t in SEQ_LENS:
        for window in WINDOWS:
            if window_for(window, t) == 0:
                continue  # T-1 at T=1: no such window
            for gqa in (False, True):
                yield pytest.param(t, window_for(window, t), gqa, id=f"T{t}-w{window}-{'gqa' if gqa else 'mha'}")


def qkv(t: int, gqa: bool, b: int = 2, heads: int = 4, d: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed + t)
    kv_heads = 2 if gqa else heads
    return [torch.randn(b, h, t, d, generator=gen) for h in (heads, kv_heads, kv_heads)]


@pytest.mark.parametrize("t, window, gqa", list(cases()))
def test_causal_attention_and_gradients_equal_the_dense_reference(t, window, gqa):
    inputs = qkv(t, gqa)
    cotangent = torch.randn(inputs[0].shape, generator=torch.Generator().manual_seed(1))
    ours = verify.outputs_and_grads(lambda x: [causal_attention(*x, window, gqa)], verify.leaves_of(inputs),
                                    [cotangent])
    ref = verify.outputs_and_grads(lambda x: [attention_reference(*x, window, gqa)], verify.leaves_of(inputs),
                                   [cotangent])
    for name, a, b in zip(["o", "dq", "dk", "dv"], ours, ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("t, window, gqa", list(cases()))
def test_flex_path_equals_the_dense_reference(t, window, gqa):
    """FlexAttention with our block mask (eager, on the CPU: forward only), every window including none."""
    inputs = qkv(t, gqa, seed=7)
    with torch.no_grad():
        ours = ops_attention._flex_causal_attention(*inputs, window, gqa)
        ref = attention_reference(*inputs, window, gqa)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_reference_is_the_windowed_causal_definition():
    """A query sees itself and the window-1 tokens before it, as the cached-decoding mask does."""
    t, window = 9, 3
    v = torch.eye(t)[None, None]  # output row i = the attention weights of query i
    q = torch.zeros(1, 1, t, t)  # equal scores: uniform over the allowed keys
    weights = attention_reference(q, q, v, window, False)[0, 0]
    i, j = torch.meshgrid(torch.arange(t), torch.arange(t), indexing="ij")
    allowed = (j <= i) & (i - j < window)
    torch.testing.assert_close(weights, allowed / allowed.sum(1, keepdim=True))


@pytest.mark.parametrize("t", (1, 17, 130, 300))
@pytest.mark.parametrize("window", (None, 1, 5, 128, 200))
def test_banded_block_mask_equals_create_block_mask(monkeypatch, t, window):
    """The block mask built a band of query blocks at a time (one block per band here) is the one
    `create_block_mask` makes from the whole [T, T] grid: partial, full and transposed indices alike."""
    monkeypatch.setattr(ops_attention, "_MASK_BUILD_ELEMENTS", 1)
    mask_mod = ops_attention._mask_mod(window)
    ours = ops_attention._build_block_mask(mask_mod, None, t, t, torch.device("cpu")).as_tuple()
    theirs = create_block_mask(mask_mod, None, None, t, t, device="cpu").as_tuple()
    assert len(ours) == len(theirs)
    for a, b in zip(ours[:-1], theirs[:-1]):  # the last entry is the mask_mod itself
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            assert a == b


def test_block_mask_is_built_once_per_length_window_and_device(monkeypatch):
    monkeypatch.setattr(ops_attention, "_use_flex", lambda q: True)
    ops_attention._cached_window_block_mask.cache_clear()
    inputs = qkv(130, True)
    with torch.no_grad():
        for _ in range(3):
            causal_attention(*inputs, 16, True)
        causal_attention(*qkv(64, True), 16, True)
    info = ops_attention._cached_window_block_mask.cache_info()
    assert (info.misses, info.hits) == (2, 2)
    mask = ops_attention._window_block_mask(130, 16, torch.device("cpu"))
    assert mask is ops_attention._window_block_mask(130, 16, "cpu")
    assert mask.shape[-2:] == (130, 130) and mask.BLOCK_SIZE == (128, 128)


def test_only_cuda_takes_the_flex_path():
    assert not ops_attention._use_flex(torch.zeros(1, 1, 4, 8))  # no FlexAttention backward on the CPU
    assert torch.float64 not in ops_attention.FLEX_DTYPES  # FlexAttention's CUDA kernels lack it


def test_flex_path_follows_autocast():
    """FlexAttention is not on autocast's list: under autocast it gets q, k, v in the autocast dtype, as
    SDPA would."""
    inputs = qkv(64, True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops_attention._flex_causal_attention(*inputs, 16, True)
    assert out.dtype == torch.bfloat16
    ref = attention_reference(*[x.bfloat16().float() for x in inputs], 16, True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def tiny_model(gqa: bool) -> HybridLM:
    values = {"model.attention.window_size": 8, "data.seq_len": 64, "model.kernels": "torch"}
    if gqa:
        values |= {"model.attention.num_heads": 4, "model.attention.num_kv_heads": 2}
    config = resolve(preset="tiny", values=values).model
    assert "A" in config.layout
    torch.manual_seed(0)
    return HybridLM(config).eval()


@pytest.mark.parametrize("gqa", (False, True))
def test_model_logits_with_flex_equal_the_dense_reference(monkeypatch, gqa):
    model = tiny_model(gqa)
    ids = torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with monkeypatch.context() as m:
            m.setattr("hybridlm.model.attention.causal_attention", attention_reference)
            reference = model(ids).logits
        with monkeypatch.context() as m:
            m.setattr(ops_attention, "_use_flex", lambda q: True)
            flex = model(ids).logits
        default = model(ids).logits  # the CPU's own path
    torch.testing.assert_close(flex, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(default, reference, atol=1e-5, rtol=1e-5)


def test_model_trains_through_causal_attention_on_the_cpu():
    model = tiny_model(gqa=True).train()
    ids = torch.randint(0, model.config.vocab_size, (2, 65), generator=torch.Generator().manual_seed(1))
    out = model(ids[:, :-1], labels=ids[:, 1:])
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("flex", (False, True))
def test_cached_decoding_with_a_window_matches_the_full_forward(monkeypatch, flex):
    """The full forward (flex or dense) against a prefill longer than the window and then token-by-token
    decoding, which keeps its own SDPA paths."""
    if flex:
        monkeypatch.setattr(ops_attention, "_use_flex", lambda q: True)
    model = tiny_model(gqa=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        prefix = model(ids[:, :20], cache=cache).logits
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(20, 40)]
    torch.testing.assert_close(torch.cat([prefix, *steps], dim=1), full, atol=1e-4, rtol=1e-4)


def test_verify_flex_rows_on_the_cpu():
    """The GPU "flex" section's machinery, tiny: each config is one row of bf16 against float32."""
    checks = list(verify.check_flex(torch.device("cpu"), configs=((1, 256, False), (2, 256, True)), window=64,
                                    heads=4, head_dim=16, kv_heads=2))
    assert [c.name.split(":")[0] for c in checks] == ["window attention bf16 B=1 T=256 window=64 4x16",
                                                      "window attention bf16 B=2 T=256 window=64 4x16 GQA 4/2"]
    assert all(c.ok and 0 < c.error < 1e-2 for c in checks)
