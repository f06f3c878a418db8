"""The `hybridlm::gdn_chunk` custom op (FLA's training kernel behind a node torch.compile traces) and the
fused pieces around it, on the CPU: the op's registration (opcheck), its gradients against finite
differences, a GDN block compiled with fullgraph=True equal to eager, the shifted-sum short convolution
against F.conv1d, and the one-GEMM input projection against the six separate projections."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from hybridlm.config.model_config import ModelConfig
from hybridlm.model.block import Block
from hybridlm.model.kernels import TORCH_KERNELS, torch_short_conv
from hybridlm.ops import gdn_custom_op  # noqa: F401 - registers the op
from hybridlm.ops.gated_delta_rule import gated_delta_rule_with_gates


def op_inputs(dtype=torch.float64, b=2, t=70, h=2, hv=4, dk=8, dv=16, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_(True)

    return (rand(b, t, h, dk), rand(b, t, h, dk), rand(b, t, hv, dv), rand(b, t, hv), rand(b, t, hv),
            rand(hv, scale=0.5), rand(hv, scale=0.5))


def gdn_op(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval):
    return torch.ops.hybridlm.gdn_chunk(q, k, v, a, b, A_log, dt_bias, allow_neg_eigval)


@pytest.mark.parametrize("allow_neg_eigval", [False, True])
def test_opcheck(allow_neg_eigval):
    """Schema, autograd registration, the fake implementation's shapes and dtypes, and AOT dispatch."""
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(torch.ops.hybridlm.gdn_chunk.default, (*op_inputs(dtype, t=20), allow_neg_eigval))


def test_op_equals_the_reference_and_its_gradients_are_right():
    inputs = op_inputs(t=70)
    got = gdn_op(*inputs, True)
    expected = gated_delta_rule_with_gates(*inputs, True, backend="torch")
    assert torch.equal(got, expected)
    small = op_inputs(b=1, t=9, h=1, hv=2, dk=4, dv=3)
    assert torch.autograd.gradcheck(lambda *x: gdn_op(*x, False), small)


def test_fake_implementation_matches_a_bfloat16_call():
    """The shapes and dtypes the compiler plans with are those the kernel returns, in the dtypes of training."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    inputs = [t.detach().to(torch.bfloat16) for t in op_inputs(t=16)]
    inputs[5], inputs[6] = inputs[5].float(), inputs[6].float()  # A_log, dt_bias stay float32 parameters
    real = gdn_op(*inputs, False)
    with FakeTensorMode() as mode:
        fake = gdn_op(*[mode.from_tensor(t) for t in inputs], False)
        grads = torch.ops.hybridlm.gdn_chunk_backward(mode.from_tensor(real), *[mode.from_tensor(t) for t in inputs],
                                                      False)
    assert (fake.shape, fake.dtype) == (real.shape, real.dtype) == (inputs[2].shape, torch.bfloat16)
    assert [(g.shape, g.dtype) for g in grads] == [(t.shape, t.dtype) for t in inputs]


def small_model_config(**changes) -> ModelConfig:
    config = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_heads=2, head_dim=8, expand_v=2.0,
                  intermediate_size=64, attention_layers=[1], attention={"num_heads": 2})
    config.update(changes)
    return ModelConfig(**config)


def test_a_gdn_block_through_the_op_compiles_as_one_graph_and_equals_eager():
    """fullgraph=True: Dynamo traces the block, custom op included, without a break; same loss and grads."""
    torch.manual_seed(0)
    eager = Block(small_model_config(), 0)
    eager.attn.kernels = replace(TORCH_KERNELS, gdn_train=gdn_op)
    compiled = copy.deepcopy(eager)
    compiled.compile(fullgraph=True, backend="aot_eager")  # Inductor's C++ build is slow on 2 cores
    x = torch.randn(2, 40, 32)
    out_e, out_c = eager(x), compiled(x)
    (out_e.square().sum()).backward()
    (out_c.square().sum()).backward()
    assert (out_e - out_c).abs().max().item() < 1e-5
    grads = dict(eager.named_parameters())
    assert max((p.grad - grads[n].grad).abs().max().item() for n, p in compiled.named_parameters()) < 1e-5


def test_shifted_sum_short_conv_equals_conv1d():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 13, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(6, 1, 4, dtype=torch.float64, generator=g, requires_grad=True)
    expected = F.silu(F.conv1d(F.pad(x.transpose(1, 2), (3, 0)), w, groups=6).transpose(1, 2))
    got = torch_short_conv(x, w)
    assert (got - expected).abs().max().item() < 1e-12
    dy = torch.randn_like(got)
    assert all((a - b).abs().max().item() < 1e-12
               for a, b in zip(torch.autograd.grad(got, (x, w), dy), torch.autograd.grad(expected, (x, w), dy)))
    short = torch.randn(1, 2, 6, dtype=torch.float64, generator=g)  # T shorter than the kernel
    assert torch.allclose(torch_short_conv(short, w), F.silu(F.conv1d(F.pad(short.transpose(1, 2), (3, 0)), w,
                                                                     groups=6).transpose(1, 2)))


@pytest.mark.parametrize("use_gate", [True, False])
def test_one_gemm_projection_equals_the_separate_projections(use_gate):
    """The stacked GEMM and the one convolution over q|k|v compute exactly FLA's per-projection layer."""
    torch.manual_seed(0)
    layer = Block(small_model_config(use_gate=use_gate), 0).attn.double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    qkv, gate, a, b = layer._in_projections(x)
    q, k, v = layer._conv(qkv, None).split([layer.key_dim, layer.key_dim, layer.value_dim], dim=-1)
    assert torch.allclose(q, layer.q_conv1d(layer.q_proj(x))[0], atol=1e-12)
    assert torch.allclose(k, layer.k_conv1d(layer.k_proj(x))[0], atol=1e-12)
    assert torch.allclose(v, layer.v_conv1d(layer.v_proj(x))[0], atol=1e-12)
    assert torch.allclose(a, layer.a_proj(x)) and torch.allclose(b, layer.b_proj(x))
    assert (gate is None) == (not use_gate)
    if use_gate:
        assert torch.allclose(gate, layer.g_proj(x))
