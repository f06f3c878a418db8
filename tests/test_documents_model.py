"""Packed documents (`cu_seqlens`): every layer restarts at a boundary, so a packed row gives each document
exactly what running it alone gives (float64, on the CPU), and the FLA paths receive the boundaries."""

import pytest
import torch
import torch.nn.functional as F

from hybridlm.config import ModelConfig
from hybridlm.config.model_config import AttentionConfig
from hybridlm.data.packing import IGNORE_LABEL, pack_documents
from hybridlm.errors import BackendError
from hybridlm.model import HybridLM
from hybridlm.model.kernels import torch_short_conv
from hybridlm.model.rotary import RotaryEmbedding
from hybridlm.ops import attention as ops_attention
from hybridlm.ops.attention import attention_reference, causal_attention
from hybridlm.ops.cross_entropy import IGNORE_INDEX
from hybridlm.ops.documents import document_ids, positions_in_documents, segments
from hybridlm.ops.gated_delta_rule import gated_delta_rule, gated_delta_rule_with_gates

LENGTHS = (1, 63, 64, 65, 200)  # the lengths: around the chunk size of 64, and one token
VOCAB = 97


def cu_of(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def small_config(layout: str, window: int | None = None, **kwargs) -> ModelConfig:
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=len(layout), num_heads=2, head_dim=16,
                intermediate_size=64, layout=layout, kernels="torch",
                attention=AttentionConfig(num_heads=4, num_kv_heads=2, window_size=window))
    base.update(kwargs)
    return ModelConfig(**base)


def gdn_inputs(t: int, seed: int = 0, heads: int = 2, v_heads: int = 4, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return (rnd(1, t, heads, d), rnd(1, t, heads, d), rnd(1, t, v_heads, d),
            -torch.rand(1, t, v_heads, generator=g, dtype=torch.float64),
            torch.rand(1, t, v_heads, generator=g, dtype=torch.float64))


# ------------------------------------------------------------------------------------------- the op
@pytest.mark.parametrize("mode", ["chunk", "recurrent", "auto"])
def test_varlen_gdn_equals_per_document_calls(mode):
    cu = cu_of(LENGTHS)
    q, k, v, g, beta = gdn_inputs(int(cu[-1]))
    h0 = torch.randn(len(LENGTHS), 4, 8, 8, dtype=torch.float64)
    o, final = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True, backend="torch",
                                mode=mode, use_qk_l2norm_in_kernel=True, cu_seqlens=cu)
    for d, (s, e) in enumerate(segments(cu)):
        ref, ref_final = gated_delta_rule(*(x[:, s:e] for x in (q, k, v, g, beta)), initial_state=h0[d:d + 1],
                                          output_final_state=True, backend="torch", mode="recurrent",
                                          use_qk_l2norm_in_kernel=True)
        assert torch.allclose(o[:, s:e], ref, atol=1e-10, rtol=0)
        assert torch.allclose(final[d:d + 1], ref_final, atol=1e-10, rtol=0)
    # and the boundaries matter: without them the later documents see the earlier ones
    leaky, _ = gated_delta_rule(q, k, v, g, beta, backend="torch", use_qk_l2norm_in_kernel=True)
    assert not torch.allclose(leaky[:, 1:], o[:, 1:])


def test_varlen_gdn_with_gates_equals_per_document_calls_and_gradients():
    cu = cu_of((5, 70, 3))
    t = int(cu[-1])
    q, k, v, _, _ = gdn_inputs(t, seed=1)
    a = torch.randn(1, t, 4, dtype=torch.float64)
    b = torch.randn(1, t, 4, dtype=torch.float64)
    A_log, dt_bias = torch.rand(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    leaves = [x.requires_grad_() for x in (q, k, v, a, b, A_log, dt_bias)]
    packed = gated_delta_rule_with_gates(q, k, v, a, b, A_log, dt_bias, backend="torch", cu_seqlens=cu)
    weights = torch.randn_like(packed)
    packed_grads = torch.autograd.grad((packed * weights).sum(), leaves)
    alone = torch.cat([gated_delta_rule_with_gates(*(x[:, s:e] for x in (q, k, v, a, b)), A_log, dt_bias,
                                                   backend="torch") for s, e in segments(cu)], dim=1)
    alone_grads = torch.autograd.grad((alone * weights).sum(), leaves)
    assert torch.allclose(packed, alone, atol=1e-12, rtol=0)
    for got, want in zip(packed_grads, alone_grads):
        assert torch.allclose(got, want, atol=1e-10, rtol=0)


def test_varlen_inputs_are_checked():
    q, k, v, g, beta = gdn_inputs(10)
    with pytest.raises(ValueError, match="batch 1"):
        gated_delta_rule(*(x.expand(2, *x.shape[1:]) for x in (q, k, v, g, beta)), backend="torch",
                         cu_seqlens=cu_of((5, 5)))
    with pytest.raises(ValueError, match="from 0 to the 10 tokens"):
        gated_delta_rule(q, k, v, g, beta, backend="torch", cu_seqlens=cu_of((5, 4)))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, HV, K, V\]"):
        gated_delta_rule(q, k, v, g, beta, backend="torch", cu_seqlens=cu_of((5, 5)),
                         initial_state=torch.zeros(1, 4, 8, 8, dtype=torch.float64))


# ------------------------------------------------------------------------------ the layers' pieces
def test_short_conv_does_not_see_across_a_boundary():
    cu = cu_of((1, 2, 3, 9))
    x = torch.randn(1, 15, 6, dtype=torch.float64)
    w = torch.randn(6, 1, 4, dtype=torch.float64)
    packed = torch_short_conv(x, w, cu)
    alone = torch.cat([torch_short_conv(x[:, s:e], w) for s, e in segments(cu)], dim=1)
    assert torch.allclose(packed, alone, atol=1e-14, rtol=0)
    changed = x.clone()
    changed[:, :6] += 1.0  # the first three documents
    assert torch.equal(torch_short_conv(changed, w, cu)[:, 6:], packed[:, 6:])
    assert torch.equal(torch_short_conv(x, w), torch_short_conv(x, w, None))


def test_document_ids_and_positions():
    cu = cu_of((1, 3, 2))
    assert document_ids(cu, 6).tolist() == [0, 1, 1, 1, 2, 2]
    assert positions_in_documents(cu, 6).tolist() == [0, 0, 1, 2, 0, 1]


def test_rope_positions_restart_per_document():
    rotary = RotaryEmbedding(8).double()
    q, k = torch.randn(1, 7, 2, 8, dtype=torch.float64), torch.randn(1, 7, 2, 8, dtype=torch.float64)
    cu = cu_of((3, 4))
    rq, rk = rotary(q, k, positions=positions_in_documents(cu, 7))
    first_q, first_k = rotary(q[:, :3], k[:, :3])
    second_q, second_k = rotary(q[:, 3:], k[:, 3:])
    assert torch.equal(rq, torch.cat([first_q, second_q], 1)) and torch.equal(rk, torch.cat([first_k, second_k], 1))
    shifted_q, _ = rotary(q, k)
    assert not torch.allclose(shifted_q[:, 3:], rq[:, 3:])


@pytest.mark.parametrize("window", [None, 1, 16, 300])
@pytest.mark.parametrize("gqa", [False, True])
def test_attention_keeps_to_each_document(window, gqa):
    cu = cu_of(LENGTHS)
    t = int(cu[-1])
    q = torch.randn(1, 4, t, 8, dtype=torch.float64)
    kv_heads = 2 if gqa else 4
    k, v = torch.randn(1, kv_heads, t, 8, dtype=torch.float64), torch.randn(1, kv_heads, t, 8, dtype=torch.float64)
    packed = causal_attention(q, k, v, window, gqa, cu)
    alone = torch.cat([attention_reference(q[..., s:e, :], k[..., s:e, :], v[..., s:e, :], window, gqa)
                       for s, e in segments(cu)], dim=-2)
    assert torch.allclose(packed, alone, atol=1e-12, rtol=0)


@pytest.mark.parametrize("window", [None, 16, 130])
def test_flex_document_block_mask_equals_the_dense_reference(window):
    """The CUDA path's FlexAttention with the per-batch document block mask (eager on the CPU, forward
    only), in float32; lengths straddle the 128-token blocks."""
    cu = cu_of((1, 63, 64, 65, 200, 128, 40))
    t = int(cu[-1])
    q, k, v = (torch.randn(1, 4, t, 8) for _ in range(3))
    with torch.no_grad():
        flex = ops_attention._flex_causal_attention(q, k, v, window, False, document_ids(cu, t))
        dense = attention_reference(q, k, v, window, False, document_ids(cu, t))
    assert torch.allclose(flex, dense, atol=2e-5, rtol=0)


@pytest.mark.parametrize("window", [None, 5, 200])
def test_document_block_mask_blocks_are_exact_where_it_matters(window):
    """Every block the mask calls full is all allowed, every block it leaves out is all masked."""
    cu = cu_of((1, 63, 64, 65, 200, 128, 40, 130))
    t = int(cu[-1])
    ids = document_ids(cu, t)
    mask = ops_attention._document_block_mask(ids, window)
    pos = torch.arange(t)
    allowed = (pos[:, None] >= pos[None, :]) & (ids[:, None] == ids[None, :])
    if window is not None:
        allowed &= pos[:, None] - pos[None, :] < window
    dense = mask.to_dense()[0, 0].bool()  # [q blocks, kv blocks]: partial or full
    n = dense.shape[0]
    padded = F.pad(allowed, (0, n * 128 - t, 0, n * 128 - t)).view(n, 128, n, 128)
    any_allowed = padded.any(dim=(1, 3))
    assert torch.equal(dense, dense | any_allowed) and not (any_allowed & ~dense).any()
    full = torch.zeros(n, n, dtype=torch.bool)
    counts, index = mask.full_kv_num_blocks[0, 0], mask.full_kv_indices[0, 0]
    for row in range(n):
        full[row, index[row, :counts[row]].long()] = True
    assert padded.all(dim=(1, 3))[full].all()


# ------------------------------------------------------------------------------------- the model
def packed_row(lengths, seed=0):
    """Documents of `lengths` (each ending in eos), one row of the stream."""
    g = torch.Generator().manual_seed(seed)
    eos = VOCAB - 1
    docs = [torch.cat([torch.randint(0, eos, (n - 1,), generator=g), torch.tensor([eos])]) for n in lengths]
    extra = torch.randint(0, eos, (1,), generator=g)  # the next document's first token: the window's last
    return pack_documents(torch.cat([*docs, extra])[None], eos), docs, extra


@pytest.mark.parametrize("layout, window", [("GGG", None), ("AAA", None), ("GAG", None), ("AGA", 16), ("AA", 1)])
def test_packed_row_gives_each_document_its_own_logits_loss_and_gradients(layout, window):
    torch.manual_seed(0)
    model = HybridLM(small_config(layout, window)).double()
    batch, docs, _ = packed_row(LENGTHS)
    out = model(batch.inputs, labels=batch.labels, cu_seqlens=batch.cu_seqlens)
    packed_grads = torch.autograd.grad(out.loss, list(model.parameters()))
    total, count, start = 0.0, 0, 0
    for doc in docs:
        alone = model(doc[None])
        assert torch.allclose(out.logits[0, start:start + len(doc)], alone.logits[0], atol=1e-10, rtol=0)
        if len(doc) > 1:  # its targets: every next token inside it (its eos included)
            total = total + F.cross_entropy(alone.logits[0, :-1], doc[1:], reduction="sum")
            count += len(doc) - 1
        start += len(doc)
    assert count == int((batch.labels != IGNORE_INDEX).sum())
    reference = total / count
    assert torch.allclose(out.loss, reference, atol=1e-12, rtol=0)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    for got, want in zip(packed_grads, reference_grads):
        assert torch.allclose(got, want, atol=1e-10, rtol=0)


def test_a_batch_of_rows_flattened_equals_the_rows_alone():
    """Rows of one batch are segments too: nothing flows from one row into the next."""
    torch.manual_seed(0)
    model = HybridLM(small_config("GAG", 8)).double().eval()
    eos = VOCAB - 1
    windows = torch.randint(0, eos, (3, 41))
    windows[0, 10] = windows[2, 5] = windows[2, 6] = eos
    batch = pack_documents(windows, eos)
    assert segments(batch.cu_seqlens) == [(0, 11), (11, 40), (40, 80), (80, 86), (86, 87), (87, 120)]
    with torch.no_grad():
        packed = model(batch.inputs, cu_seqlens=batch.cu_seqlens).logits[0]
        for s, e in segments(batch.cu_seqlens):
            alone = model(batch.inputs[:, s:e]).logits[0]
            assert torch.allclose(packed[s:e], alone, atol=1e-10, rtol=0)


def test_stream_forward_is_unchanged_by_the_varlen_plumbing():
    """No cu_seqlens: the same numbers as a single segment spanning the row (the plain causal path)."""
    torch.manual_seed(0)
    model = HybridLM(small_config("GAG", 8)).double().eval()
    ids = torch.randint(0, VOCAB, (1, 50))
    with torch.no_grad():
        plain = model(ids).logits
        one = model(ids, cu_seqlens=cu_of((50,))).logits
    assert torch.allclose(plain, one, atol=1e-12, rtol=0)


def test_packed_documents_are_refused_with_a_cache():
    model = HybridLM(small_config("GA")).eval()
    with pytest.raises(ValueError, match="not with a"):
        model(torch.randint(0, VOCAB, (1, 4)), cache=model.new_cache(), cu_seqlens=cu_of((2, 2)))


# ----------------------------------------------------------------------------- FLA wiring by contract
def test_fla_varlen_calls_receive_batch_1_and_cu_seqlens(monkeypatch):
    """FLA's chunk kernel and causal_conv1d are replaced by references that check the varlen call (batch 1,
    cu_seqlens given) and compute its semantics; the fused kernel record then equals the PyTorch one."""
    import sys
    import types

    from hybridlm.model import fused
    from hybridlm.model.kernels import TORCH_KERNELS, torch_gdn_train

    calls = []

    def chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=None, A_log=None, dt_bias=None,
                               allow_neg_eigval=False, **kw):
        assert q.shape[0] == 1 and cu_seqlens is not None and kw["use_gate_in_kernel"]
        calls.append("gdn")
        return torch_gdn_train(q, k, v, g, beta, A_log, dt_bias, allow_neg_eigval, cu_seqlens), None

    def causal_conv1d(x, weight, activation, cu_seqlens=None):
        assert x.shape[0] == 1 and cu_seqlens is not None and activation == "silu"
        calls.append("conv")
        return torch_short_conv(x, weight[:, None], cu_seqlens), None

    module = types.ModuleType("fla.ops.gated_delta_rule")
    module.chunk_gated_delta_rule = chunk_gated_delta_rule
    monkeypatch.setitem(sys.modules, "fla.ops.gated_delta_rule", module)
    monkeypatch.setattr(fused, "load", lambda: {"causal_conv1d": causal_conv1d})

    torch.manual_seed(0)
    model = HybridLM(small_config("GG")).double()
    batch, _, _ = packed_row((3, 70, 9))
    want = model(batch.inputs, labels=batch.labels, cu_seqlens=batch.cu_seqlens).loss
    from dataclasses import replace
    model.use_kernels(replace(TORCH_KERNELS, gdn_train=fused.gdn_train, short_conv=fused.short_conv))
    got = model(batch.inputs, labels=batch.labels, cu_seqlens=batch.cu_seqlens).loss
    assert calls.count("gdn") == 2 and calls.count("conv") == 6
    assert torch.allclose(got, want, atol=1e-12, rtol=0)


def test_the_compiled_blocks_op_refuses_packed_documents():
    from hybridlm.model import fused

    q = torch.zeros(1, 4, 2, 8)
    with pytest.raises(BackendError, match="compiled GDN blocks cannot take packed documents"):
        fused.gdn_train_op(q, q, q, q[..., 0], q[..., 0], q[0, 0, :, 0], q[0, 0, :, 0], False, cu_of((2, 2)))


def test_the_ignore_labels_agree():
    assert IGNORE_LABEL == IGNORE_INDEX


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_passes_the_boundaries(mode):
    from hybridlm.train.activation_checkpointing import apply_activation_checkpointing

    torch.manual_seed(0)
    plain = HybridLM(small_config("GA", 8)).double()
    checkpointed = HybridLM(small_config("GA", 8)).double()
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed, mode)
    batch, _, _ = packed_row((3, 70, 9))
    losses = [m(batch.inputs, labels=batch.labels, cu_seqlens=batch.cu_seqlens).loss for m in (plain, checkpointed)]
    grads = [torch.autograd.grad(loss, list(m.parameters())) for loss, m in zip(losses, (plain, checkpointed))]
    assert torch.allclose(losses[0], losses[1], atol=1e-12, rtol=0)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(*grads))
