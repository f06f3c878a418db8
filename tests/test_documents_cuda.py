"""The CUDA paths of packed documents (FLA's varlen kernels, FlexAttention's document block mask) against
per-document calls and the dense reference. Skipped without CUDA and FLA; run on a GPU with
`python -m pytest -q tests/test_documents_cuda.py`."""

import pytest
import torch

from hybridlm.ops.documents import document_ids, segments

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

LENGTHS = (1, 63, 64, 65, 200, 1000, 7)


def cu_of(lengths) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")


def fla_or_skip():
    from hybridlm.ops.gdn_fla import fla_usable

    usable, reason = fla_usable("cuda")
    if not usable:
        pytest.skip(reason)


def test_fla_varlen_gdn_equals_per_document_fla_calls_and_the_torch_reference():
    fla_or_skip()
    from hybridlm.ops.gated_delta_rule import gated_delta_rule_with_gates

    torch.manual_seed(0)
    cu = cu_of(LENGTHS)
    t, h, hv, d = int(cu[-1]), 2, 4, 64
    q, k = (torch.randn(1, t, h, d, device="cuda") for _ in range(2))
    v = torch.randn(1, t, hv, d, device="cuda")
    a, b = torch.randn(1, t, hv, device="cuda"), torch.randn(1, t, hv, device="cuda")
    A_log, dt_bias = torch.rand(hv, device="cuda"), torch.randn(hv, device="cuda")
    leaves = [x.requires_grad_() for x in (q, k, v, a, b, A_log, dt_bias)]

    def run(backend, varlen):
        if varlen:
            return gated_delta_rule_with_gates(q, k, v, a, b, A_log, dt_bias, backend=backend, cu_seqlens=cu)
        return torch.cat([gated_delta_rule_with_gates(*(x[:, s:e] for x in (q, k, v, a, b)), A_log, dt_bias,
                                                      backend=backend) for s, e in segments(cu)], dim=1)

    weights = torch.randn(1, t, hv, d, device="cuda")
    results = {}
    for name, backend, varlen in (("fla varlen", "fla", True), ("fla per doc", "fla", False),
                                  ("torch", "torch", True)):
        o = run(backend, varlen)
        results[name] = (o, torch.autograd.grad((o * weights).sum(), leaves))
    for name in ("fla per doc", "torch"):
        o, grads = results[name]
        assert (results["fla varlen"][0] - o).abs().max().item() < 2e-3, name
        for got, want in zip(results["fla varlen"][1], grads):
            assert (got - want).abs().max().item() <= 2e-2 * max(want.abs().max().item(), 1.0), name


def test_fla_varlen_short_conv_equals_the_torch_kernel():
    fla_or_skip()
    from hybridlm.model import fused
    from hybridlm.model.kernels import torch_short_conv

    cu = cu_of(LENGTHS)
    x = torch.randn(1, int(cu[-1]), 96, device="cuda")
    w = torch.randn(96, 1, 4, device="cuda")
    assert (fused.short_conv(x, w, cu) - torch_short_conv(x, w, cu)).abs().max().item() < 1e-4


@pytest.mark.parametrize("window", [None, 128, 300])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_document_mask_equals_the_dense_reference_forward_and_backward(window, dtype):
    from hybridlm.ops.attention import attention_reference, causal_attention

    torch.manual_seed(0)
    cu = cu_of(LENGTHS)
    t = int(cu[-1])
    q = torch.randn(1, 4, t, 64, device="cuda", dtype=dtype, requires_grad=True)
    k = torch.randn(1, 2, t, 64, device="cuda", dtype=dtype, requires_grad=True)
    v = torch.randn(1, 2, t, 64, device="cuda", dtype=dtype, requires_grad=True)
    flex = causal_attention(q, k, v, window, True, cu)
    dense = attention_reference(q, k, v, window, True, document_ids(cu, t))
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-4
    assert (flex.float() - dense.float()).abs().max().item() < tol
    g = torch.randn_like(flex)
    for got, want in zip(torch.autograd.grad(flex, (q, k, v), g), torch.autograd.grad(dense, (q, k, v), g)):
        assert (got.float() - want.float()).abs().max().item() < 10 * tol


def test_packed_model_on_cuda_equals_documents_alone():
    """The whole model with the FLA record (kernels auto): each document's logits as if run alone."""
    fla_or_skip()
    from hybridlm.config import ModelConfig
    from hybridlm.config.model_config import AttentionConfig
    from hybridlm.model import HybridLM

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=512, hidden_size=128, num_hidden_layers=3, num_heads=2, head_dim=64,
                         intermediate_size=256, layout="GAG",
                         attention=AttentionConfig(num_heads=4, num_kv_heads=2, window_size=128))
    model = HybridLM(config).cuda().eval()
    cu = cu_of(LENGTHS)
    ids = torch.randint(0, 512, (1, int(cu[-1])), device="cuda")
    with torch.no_grad():
        packed = model(ids, cu_seqlens=cu).logits[0]
        for s, e in segments(cu):
            alone = model(ids[:, s:e]).logits[0]
            assert (packed[s:e] - alone).abs().max().item() < 5e-3, (s, e)


def test_flex_document_mask_does_not_recompile_per_batch():
    """A new batch (other boundaries, same length) reuses the compiled FlexAttention kernel."""
    from hybridlm.ops.attention import causal_attention

    q = torch.randn(1, 4, 1024, 64, device="cuda", dtype=torch.bfloat16)
    k, v = q[:, :2].clone(), q[:, 2:].clone()
    for window in (None, 256):  # a model's attention layers share one window: one kernel each
        causal_attention(q, k, v, window, True, cu_of((100, 924)))
    with torch._dynamo.config.patch(error_on_recompile=True):
        causal_attention(q, k, v, None, True, cu_of((500, 300, 224)))
        causal_attention(q, k, v, 256, True, cu_of((1, 1023)))
