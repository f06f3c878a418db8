"""`hybridlm verify`: prove on a GPU that the FLA path computes what the reference path computes.

In one process: the GDN op through FLA against float64 ground truth and against the pure-PyTorch
chunked op (forward and every gradient, bf16 and float32, head dims 64/256, T in {64, 1000, 4096},
with and without an initial state); a hybrid model's logits and gradients under bf16 autocast with
kernels=fla and kernels=torch, each against the model in float64; our pure-GDN model against FLA's own
`GatedDeltaNetForCausalLM` holding the same weights; cached decoding against the full forward, and the
generation decoder's greedy tokens (bf16 and float32, CUDA graphs) against the full forward's; FLA's
fused loss against ours; sliding-window attention through FlexAttention (bf16) against the float32 dense-mask
reference. Every line is a relative error ||a - b|| / ||b|| against a threshold.
Measuring each fast path against float64 (not only against each other) says which side is off.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass

import torch

# float32 runs FLA's kernels with tf32 dots (~3e-4); bf16 operands land between 1e-3 and 1e-2
OP_THRESHOLDS = {torch.float32: 5e-3, torch.bfloat16: 3e-2}
MODEL_THRESHOLD_BF16 = 1e-2
# A whole model under bf16 autocast against float64: on these random weights FLA's own bf16 model is 2 %
# off its float32 logits (docs/gpu-verification.md), and gradients gather the error of every layer
MODEL_AUTOCAST_THRESHOLDS = {"logits": 5e-2, "gradients": 1e-1}
DECODE_THRESHOLD = 5e-3


@dataclass
class Check:
    name: str
    error: float
    threshold: float

    @property
    def ok(self) -> bool:
        return self.error == self.error and self.error <= self.threshold  # NaN never passes


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp(min=1e-30)).item()


def _op_inputs(b, t, h, d, dtype, with_state, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    q, k, v = rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h, d)
    g = -torch.nn.functional.softplus(rand(b, t, h)) * 0.5  # log decays in (-inf, 0)
    beta = torch.sigmoid(rand(b, t, h))
    h0 = rand(b, h, d, d) * 0.1 if with_state else None
    tensors = [x.to(dtype) for x in (q, k, v)] + [g.float(), beta.to(dtype)]
    if h0 is not None:
        tensors.append(h0.float())
    return [x.requires_grad_() for x in tensors]


def leaves_of(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Fresh autograd leaves holding the tensors' values (cast to `dtype` when given)."""
    return [(x.detach().to(dtype) if dtype is not None else x.detach()).clone().requires_grad_() for x in tensors]


def outputs_and_grads(fn, leaves: list[torch.Tensor], cotangents: list[torch.Tensor]) -> list[torch.Tensor]:
    """fn(leaves)'s outputs and the leaves' gradients for the given output cotangents."""
    outputs = fn(leaves)
    torch.autograd.backward(outputs, [c.to(o.dtype) for o, c in zip(outputs, cotangents)])
    return [o.detach() for o in outputs] + [x.grad for x in leaves]


def check_op(device: torch.device, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32),
             backend: str = "fla"):
    """The GDN op through `backend` vs float64 ground truth (our chunked op in float64, itself tested
    against the defining recurrence), and vs the PyTorch op at the same precision: output, final state
    and every gradient. Each (dtype, head dim) pair is a new set of FLA kernel variants to autotune, so
    `op_bf16` / `op_fp32` split the matrix. (On the CPU, backend="torch" exercises the machinery.)"""
    from hybridlm.ops import gated_delta_rule

    names = ["o", "state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]
    for dtype in dtypes:
        for d in (64, 256):
            for t in (64, 1000, 4096):
                for with_state in (False, True):
                    b, h = (2, 4) if t <= 1000 else (1, 4)
                    label = f"op {str(dtype)[6:]} d={d} T={t}{' h0' if with_state else ''}"
                    inputs = _op_inputs(b, t, h, d, dtype, with_state, device, seed=t + d)
                    gen = torch.Generator(device=device).manual_seed(0)
                    # drawn by shape (randn_like would follow each backend's output strides) and rounded to
                    # the outputs' dtypes first, so float64 truth differentiates along the very same values
                    cotangents = [torch.randn(b, t, h, d, generator=gen, device=device).to(dtype),
                                  torch.randn(b, h, d, d, generator=gen, device=device)]

                    def run(leaves, backend=backend):
                        h0 = leaves[5] if with_state else None
                        return list(gated_delta_rule(*leaves[:5], initial_state=h0, output_final_state=True,
                                                     backend=backend, mode="chunk", use_qk_l2norm_in_kernel=True))

                    truth = outputs_and_grads(lambda leaves: run(leaves, "torch"), leaves_of(inputs, torch.float64),
                                              cotangents)
                    ours = outputs_and_grads(run, leaves_of(inputs), cotangents)
                    torch_same = outputs_and_grads(lambda leaves: run(leaves, "torch"), leaves_of(inputs), cotangents)
                    threshold = OP_THRESHOLDS[dtype]
                    for reference, ref_name, scale in ((truth, "float64", 1), (torch_same, "torch", 2)):
                        errors = [rel_error(x, y) for x, y in zip(ours, reference)]
                        worst = max(range(len(errors)), key=errors.__getitem__)
                        yield Check(f"{label}: {backend} vs {ref_name} (worst: {names[worst]})", errors[worst],
                                    scale * threshold)


def _small_hybrid_config(kernels: str, layout: str = "GGAGGA", vocab: int = 4096):
    """A few layers with the H100 presets' GDN geometry (hidden 768, 12 heads of 256, MLP 3072), so the
    model checks reuse the FLA kernel variants a training run has already autotuned (Triton's
    autotune key holds the head counts and sizes); attention with GQA and a window that cuts."""
    from hybridlm.config import ModelConfig
    from hybridlm.config.model_config import AttentionConfig

    return ModelConfig(vocab_size=vocab, hidden_size=768, num_hidden_layers=len(layout), num_heads=12,
                       head_dim=256, intermediate_size=3072, layout=layout, kernels=kernels,
                       attention=AttentionConfig(num_heads=12, num_kv_heads=4, window_size=512))


def _hybrid_logits_and_grads(device: torch.device, seq_len: int = 1000):
    """A function (kernels, dtype, prepare) -> (logits, all gradients) of one small hybrid (GDN and windowed
    GQA attention), the same weights every call, under bf16 autocast for float32; `prepare(model)` may
    change the model first (swap a kernel, compile its blocks)."""
    from hybridlm.model import HybridLM

    torch.manual_seed(0)
    ids = torch.randint(0, 4096, (2, seq_len), device=device)
    state = HybridLM(_small_hybrid_config("torch")).to(device).state_dict()

    def logits_and_grads(kernels: str, dtype: torch.dtype, prepare=None) -> tuple[torch.Tensor, torch.Tensor]:
        model = HybridLM(_small_hybrid_config(kernels)).to(device)
        model.load_state_dict(state)
        model.to(dtype)
        if prepare is not None:
            prepare(model)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.float32):
            out = model(ids, labels=torch.roll(ids, -1, 1))
        out.loss.backward()
        return out.logits.double().detach(), torch.cat([p.grad.flatten().double() for p in model.parameters()])

    return logits_and_grads


def check_model_backends(device: torch.device, backend: str = "fla", seq_len: int = 1000) -> list[Check]:
    """A hybrid model (GDN and windowed GQA attention) under bf16 autocast with `backend` kernels and with
    torch kernels, each against the same model in float64 (torch kernels): logits and all gradients."""
    logits_and_grads = _hybrid_logits_and_grads(device, seq_len)
    truth = logits_and_grads("torch", torch.float64)
    checks = []
    for kernels in dict.fromkeys((backend, "torch")):
        logits, grads = logits_and_grads(kernels, torch.float32)
        checks += [Check(f"hybrid model logits, {kernels} kernels (bf16 autocast) vs float64",
                         rel_error(logits, truth[0]), MODEL_AUTOCAST_THRESHOLDS["logits"]),
                   Check(f"hybrid model gradients, {kernels} kernels (bf16 autocast) vs float64",
                         rel_error(grads, truth[1]), MODEL_AUTOCAST_THRESHOLDS["gradients"])]
    return checks


def _opcheck_gdn_chunk(device: torch.device) -> Check:
    """torch.library.opcheck of the custom op with FLA's CUDA kernels behind it, in training's dtypes:
    schema, fake shapes and strides against the real outputs, autograd registration, AOT dispatch."""
    from hybridlm.ops import gdn_custom_op  # noqa: F401 - registers the op

    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_()

    b, t, h, d = 2, 256, 4, 64
    args = (rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h, d), rand(b, t, h), rand(b, t, h),
            rand(h, dtype=torch.float32), rand(h, dtype=torch.float32), False)
    try:
        torch.library.opcheck(torch.ops.hybridlm.gdn_chunk.default, args)
        error = 0.0
    except Exception as exc:  # noqa: BLE001 - the row fails and says why
        print(f"opcheck: {type(exc).__name__}: {str(exc)[:400]}", flush=True)
        error = 1.0
    return Check("hybridlm::gdn_chunk opcheck on CUDA (schema, fake tensors, autograd, AOT dispatch)", error, 0.5)


def check_compiled(device: torch.device, seq_len: int = 1024):
    """What training runs when it compiles, and the custom op it compiles through (yields each check):
    - the `hybridlm::gdn_chunk` op (what compiled GDN blocks call) against FLA's own
      chunk_gated_delta_rule (what eager training calls) in the same model: the same kernels on the same
      inputs (the op recomputes FLA's intra-chunk matrix in its backward), so equal up to the order of
      FLA's atomic reductions;
    - the model with compiled blocks (Inductor's norms, SwiGLU and short conv around the op) against
      float64, with the thresholds of the eager model, and against the eager model."""
    from dataclasses import replace

    from hybridlm.model import fused
    from hybridlm.train.setup import compile_blocks

    logits_and_grads = _hybrid_logits_and_grads(device, seq_len)
    eager = logits_and_grads("fla", torch.float32)
    op = logits_and_grads("fla", torch.float32, lambda model: model.use_kernels(
        replace(model.kernels, gdn_train=fused.gdn_train_op)))
    for i, what in enumerate(("logits", "gradients")):
        yield Check(f"hybrid model {what}: gdn_chunk custom op vs FLA's function (bf16 autocast)",
                    rel_error(op[i], eager[i]), 1e-3)
    compiled = logits_and_grads("fla", torch.float32, compile_blocks)
    truth = logits_and_grads("torch", torch.float64)
    for i, what in enumerate(("logits", "gradients")):
        yield Check(f"hybrid model {what}, compiled blocks (bf16 autocast) vs float64",
                    rel_error(compiled[i], truth[i]), MODEL_AUTOCAST_THRESHOLDS[what])
        yield Check(f"hybrid model {what}, compiled blocks vs eager (bf16 autocast)",
                    rel_error(compiled[i], eager[i]), MODEL_AUTOCAST_THRESHOLDS[what])


def check_against_fla_model(device: torch.device):
    """Our pure-GDN model vs FLA's GatedDeltaNetForCausalLM with identical weights (yields each check).

    bf16 first: it is the issue's criterion and uses the kernels a training run has already compiled.
    float32 then shows whether the two compute the same function (only kernel-internal tf32 and
    summation order differ); its first run autotunes FLA's float32 kernels (minutes on a cold cache).
    The "vs FLA fp32" rows put each bf16 model against FLA's float32 logits, so a bf16 gap reads as
    "ours is as accurate as FLA's own bf16 model" or not."""
    from fla.models import GatedDeltaNetConfig, GatedDeltaNetForCausalLM

    from hybridlm.interop import to_fla_config
    from hybridlm.model import HybridLM

    config = _small_hybrid_config("fla", layout="GGGG")
    torch.manual_seed(0)
    ours = HybridLM(config).to(device).eval()
    kwargs = {k: v for k, v in to_fla_config(config).items() if k not in ("model_type", "architectures")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = GatedDeltaNetForCausalLM(GatedDeltaNetConfig(**kwargs)).to(device).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours_torch = HybridLM(_small_hybrid_config("torch", layout="GGGG")).to(device).eval()
    ours_torch.load_state_dict(ours.state_dict(), strict=True)
    ids = torch.randint(0, config.vocab_size, (2, 1024), device=device)

    def logits(model, dtype: torch.dtype) -> torch.Tensor:
        model.to(dtype)
        with torch.no_grad():
            out = model(input_ids=ids) if model is theirs else model(ids)
        return out.logits.float()

    theirs_bf16 = logits(theirs, torch.bfloat16)
    ours_bf16 = logits(ours, torch.bfloat16)
    yield Check("pure GDN vs FLA GatedDeltaNetForCausalLM logits (bf16)", rel_error(ours_bf16, theirs_bf16),
                MODEL_THRESHOLD_BF16)
    yield Check("pure GDN (torch kernels) vs FLA model logits (bf16)",
                rel_error(logits(ours_torch, torch.bfloat16), theirs_bf16), 3 * MODEL_THRESHOLD_BF16)
    ref = logits(theirs, torch.float32)  # weights were bf16-rounded above; all models hold the same values
    yield Check("pure GDN vs FLA GatedDeltaNetForCausalLM logits (fp32)", rel_error(logits(ours, torch.float32), ref),
                OP_THRESHOLDS[torch.float32])
    yield Check("pure GDN (torch kernels) vs FLA model logits (fp32)",
                rel_error(logits(ours_torch, torch.float32), ref), OP_THRESHOLDS[torch.float32])
    fla_bf16_error = rel_error(theirs_bf16, ref)
    yield Check("  FLA model bf16 vs FLA model fp32 (bf16's own error, for scale)", fla_bf16_error, 5e-2)
    yield Check("  pure GDN bf16 vs FLA model fp32 (<= 1.25x FLA's own + 1e-3)", rel_error(ours_bf16, ref),
                1.25 * fla_bf16_error + 1e-3)


def check_decoding(device: torch.device, kernels: str = "fla") -> list[Check]:
    """Cached chunk-then-step decoding (FLA: chunk kernel, then the in-place step kernels) vs the full forward
    (chunk kernel), logits in float32."""
    from hybridlm.model import HybridLM

    torch.manual_seed(0)
    model = HybridLM(_small_hybrid_config(kernels, layout="GAGG")).to(device).eval()
    ids = torch.randint(0, 4096, (2, 300), device=device)
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache()
        prefix = model(ids[:, :200], cache=cache).logits
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(200, 300)]
        cached = torch.cat([prefix, *steps], dim=1)
    return [Check(f"cached decoding vs full forward (fp32, {kernels} kernels)", rel_error(cached, full),
                  DECODE_THRESHOLD)]


PROMPT_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
               "First Citizen:\nYou are all resolved rather to die than to famish?\n\n")
# Greedy decoding's worst gap (in logit standard deviations, at the step) between the full forward's best
# token and the token the fast path chose: 0 when they agree, small at a near tie that rounding may flip
GREEDY_GAP_THRESHOLDS = {torch.float32: 2e-2, torch.bfloat16: 0.25}


def greedy_gap(model, prompts: list[list[int]], chosen: torch.Tensor) -> tuple[float, int]:
    """(worst normalised gap, tokens equal to the argmax) of the full forward, run without a cache over each
    prompt and the tokens `chosen` [B, N] after it, against those tokens."""
    worst, equal = 0.0, 0
    for prompt, row in zip(prompts, chosen.tolist()):
        ids = torch.tensor([prompt + row[:-1]], device=chosen.device)
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1:].float()  # the logits each choice was made from
        picked = logits.gather(1, torch.tensor(row, device=logits.device)[:, None])[:, 0]
        gaps = (logits.max(-1).values - picked) / logits.std(-1).clamp_min(1e-12)
        worst, equal = max(worst, gaps.max().item()), equal + int((gaps == 0).sum())
    return worst, equal


def check_fast_decoding(device: torch.device, kernels: str = "fla", run: str | None = None,
                        new_tokens: int = 256, dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32),
                        config=None, prompt_lengths: tuple[int, ...] = (400, 300)) -> list[Check]:
    """`hybridlm generate`'s decoder (prefill with the chunk kernels, the in-place step kernels, on-device
    sampling, CUDA graphs on CUDA) against the full forward: greedy tokens for `new_tokens` tokens, two prompts
    of different lengths in one batch (400 and 300, + 256 tokens: past the 512 window, so the ring wraps), in
    bf16 and float32; CUDA-graph decoding against the same steps run eagerly (equal tokens); seeded sampling
    reproducible. `run`: a trained run directory, prompted with text (fewer near ties than random weights),
    else a seeded random model of the H100 presets' GDN geometry prompted with random tokens."""
    from hybridlm.model import HybridLM
    from hybridlm.model.decoder import Decoder
    from hybridlm.model.sampling import Sampling

    if run is not None:
        from hybridlm.runs import load_run

        base, tokenizer = load_run(run, device=device)
        text = tokenizer.encode(PROMPT_TEXT)
        prompts = [(text * (n // len(text) + 1))[:n] for n in prompt_lengths]
        source = f"run {run}"
    else:
        torch.manual_seed(0)
        base = HybridLM(config or _small_hybrid_config(kernels)).to(device)
        gen = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, base.config.vocab_size, (n,), generator=gen).tolist() for n in prompt_lengths]
        source = "random weights"
    state = base.state_dict()
    graphs = device.type == "cuda"
    checks = []
    for dtype in dtypes:
        model = HybridLM(base.config).to(device)
        model.load_state_dict(state)
        model.to(dtype).eval()
        decoder = Decoder(model, cuda_graphs=graphs)
        fast = decoder.generate(prompts, new_tokens, Sampling(temperature=0))
        gap, equal = greedy_gap(model, prompts, fast)
        label = f"{str(dtype)[6:]}, {'CUDA graphs' if graphs else 'eager'}, {base.config.layout_string}, {source}"
        checks.append(Check(f"greedy decoder vs full forward ({label}): {equal}/{fast.numel()} tokens its argmax, "
                            "worst gap in logit std", gap, GREEDY_GAP_THRESHOLDS[dtype]))
        if dtype == dtypes[0] and graphs:
            eager = Decoder(model, cuda_graphs=False).generate(prompts, new_tokens, Sampling(temperature=0))
            checks.append(Check(f"greedy decoder, CUDA graphs vs eager ({label}): tokens that differ",
                                float((fast != eager).sum()), 0.0))
        if dtype == dtypes[0]:
            sampling = Sampling(temperature=1.0, top_k=50, top_p=0.95, repetition_penalty=1.2)
            a, b = (decoder.generate(prompts, 64, sampling, seed=7) for _ in range(2))
            checks.append(Check(f"seeded sampling reproducible ({label}): tokens that differ",
                                float((a != b).sum()), 0.0))
        del model, decoder
    return checks


def check_fused_loss(device: torch.device):
    """FLA's fused linear cross-entropy as the model calls it (head padded to 128 rows, -100 targets
    skipped) vs our chunked loss: loss value, hidden-state and head gradients, bf16 and float32, at GPT-2's
    odd vocabulary (padded) and at an aligned one (no padding)."""
    from hybridlm.model import fused
    from hybridlm.ops.cross_entropy import linear_cross_entropy

    for dtype in (torch.bfloat16, torch.float32):
        for vocab in (50257, 4096):
            gen = torch.Generator(device=device).manual_seed(vocab)
            hidden = torch.randn(4096, 768, generator=gen, device=device).to(dtype)
            weight = (torch.randn(vocab, 768, generator=gen, device=device) * 0.02).to(dtype)
            targets = torch.randint(0, vocab, (4096,), generator=gen, device=device)
            targets[::7] = -100
            results = []
            for use_fused in (True, False):
                h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
                if use_fused and "linear_cross_entropy" not in fused.load():
                    raise RuntimeError("FLA's fused linear cross-entropy is not available on this machine")
                loss = fused.linear_cross_entropy(h, w, targets) if use_fused else linear_cross_entropy(h, w, targets)
                loss.backward()
                results.append((loss.detach().float(), h.grad.float(), w.grad.float()))
            threshold = OP_THRESHOLDS[dtype]
            label = f"fused loss vs chunked loss, {str(dtype)[6:]}, vocab {vocab}"
            (a_loss, a_dh, a_dw), (b_loss, b_dh, b_dw) = results
            yield Check(f"{label}: loss", rel_error(a_loss, b_loss), threshold)
            yield Check(f"{label}: d hidden, d head (worst)", max(rel_error(a_dh, b_dh), rel_error(a_dw, b_dw)),
                        threshold)


FLEX_CONFIGS = ((1, 4096, False), (3, 4096, True), (1, 16384, True), (3, 16384, False))  # (B, T, GQA)


def check_flex(device: torch.device, configs=FLEX_CONFIGS, window: int = 2048, heads: int = 12,
               head_dim: int = 64, kv_heads: int = 4):
    """Sliding-window attention as training runs it (`causal_attention`; on CUDA: compiled FlexAttention
    with the cached block mask) in bf16 against the dense-mask reference in float32: output and the q, k,
    v gradients, 12 heads of 64 (GQA: 4 kv heads), window 2048 over T = 4096 and 16384. Each (B, T, GQA)
    compiles its own kernels (about 6 s each on an H200). The reference runs one sequence at a time, which
    bounds its memory whichever SDPA backend takes the dense mask. (Off CUDA, the path measured is the
    dense mask in bf16.)"""
    from hybridlm.ops.attention import attention_reference, causal_attention

    names = ["o", "dq", "dk", "dv"]
    for b, t, gqa in configs:
        hkv = kv_heads if gqa else heads
        gen = torch.Generator(device=device).manual_seed(b * t + gqa)
        inputs = [torch.randn(b, h, t, head_dim, generator=gen, device=device) for h in (heads, hkv, hkv)]
        # rounded to bf16 first, so the float32 reference differentiates along the very same values
        inputs = [x.to(torch.bfloat16) for x in inputs]
        cotangent = torch.randn(b, heads, t, head_dim, generator=gen, device=device).to(torch.bfloat16)
        ours = outputs_and_grads(lambda leaves: [causal_attention(*leaves, window, gqa)], leaves_of(inputs),
                                 [cotangent])
        per_sequence = [outputs_and_grads(lambda leaves: [attention_reference(*leaves, window, gqa)],
                                          leaves_of([x[i:i + 1] for x in inputs], torch.float32),
                                          [cotangent[i:i + 1]]) for i in range(b)]
        truth = [torch.cat(parts) for parts in zip(*per_sequence)]
        errors = [rel_error(x, y) for x, y in zip(ours, truth)]
        worst = max(range(len(errors)), key=errors.__getitem__)
        label = f"B={b} T={t} window={window} {heads}x{head_dim}{f' GQA {heads}/{hkv}' if gqa else ''}"
        yield Check(f"window attention bf16 {label}: causal_attention vs float32 dense mask "
                    f"(worst: {names[worst]})", errors[worst], OP_THRESHOLDS[torch.bfloat16])


def run_verify(sections: tuple[str, ...] = ("fla_model", "decode", "flex", "loss", "model", "compile", "op"),
               run: str | None = None) -> int:
    """`run`: a trained run directory for the decode section's greedy rows (default: random weights)."""
    from hybridlm.reports import format_table

    runners = {"op": check_op, "model": check_model_backends, "fla_model": check_against_fla_model,
               "decode": lambda device: [*check_decoding(device), *check_fast_decoding(device, run=run)],
               "loss": check_fused_loss, "flex": check_flex, "compile": check_compiled,
               "opcheck": lambda device: [_opcheck_gdn_chunk(device)],
               "op_bf16": lambda device: check_op(device, (torch.bfloat16,)),
               "op_fp32": lambda device: check_op(device, (torch.float32,))}
    unknown = [name for name in sections if name not in runners]
    if unknown:
        print(f"error: unknown verify section(s) {', '.join(unknown)}; choose from {', '.join(runners)}",
              file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("error: hybridlm verify needs a CUDA GPU with flash-linear-attention installed", file=sys.stderr)
        return 2
    from hybridlm.ops.gdn_fla import fla_usable

    usable, reason = fla_usable("cuda")
    if not usable and set(sections) - {"flex"}:  # FlexAttention is PyTorch's own: "flex" runs without FLA
        print(f"error: FLA kernels cannot run here: {reason}", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False
    checks: list[Check] = []
    started = time.perf_counter()
    for section in sections:
        print(f"[{time.perf_counter() - started:6.1f}s] {section}: running (the first use of a kernel variant "
              "autotunes it: minutes on a cold Triton cache)", flush=True)
        for check in runners[section](device):
            checks.append(check)
            print(f"[{time.perf_counter() - started:6.1f}s] {'ok  ' if check.ok else 'FAIL'} {check.name}: "
                  f"{check.error:.2e} (threshold {check.threshold:.0e})", flush=True)
    rows = [[c.name, f"{c.error:.2e}", f"{c.threshold:.0e}", "ok" if c.ok else "FAIL"] for c in checks]
    print(format_table(["check", "rel. error", "threshold", "result"], rows, align="lrrl"))
    failed = sum(not c.ok for c in checks)
    print(f"\n{len(checks) - failed}/{len(checks)} checks passed in {time.perf_counter() - started:.0f} s "
          f"on {torch.cuda.get_device_name(0)}")
    return 1 if failed else 0
