"""Parameter counts and rough FLOPs per token, for `hybridlm info`, presets and MFU."""

from __future__ import annotations

from torch import nn


def count_parameters(model: nn.Module) -> dict[str, int]:
    """total, embedding, non_embedding (total minus input embedding), and per layer type."""
    seen: set[int] = set()
    counts = {"total": 0, "embedding": 0, "gdn": 0, "attention": 0, "mlp": 0, "norm": 0, "lm_head": 0}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        counts["total"] += n
        if name.endswith("embeddings.weight"):
            counts["embedding"] += n
        elif name.startswith("lm_head"):
            counts["lm_head"] += n
        elif ".mlp." in name:
            counts["mlp"] += n
        elif ".attn." in name:
            layer = model.model.layers[int(name.split(".")[2])]
            counts[layer.layer_type] += n
        else:
            counts["norm"] += n
    counts["non_embedding"] = counts["total"] - counts["embedding"]
    return counts


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward), nanoGPT/PaLM style.

    6 * (non-embedding matmul params + lm_head) plus the sequence mixing: attention's
    12 * layers * T * hidden (causal halves it: 6), GDN's chunked state updates ~ 6 * (2 * K * V
    per head + chunk terms) which we approximate with the state size.
    """
    h = config.hidden_size
    n_layers = config.num_hidden_layers
    types = config.layer_types
    inter = config.mlp_intermediate_size
    gdn_proj = h * (2 * config.num_heads * config.head_dim + 2 * config.gdn_value_heads * config.head_v_dim
                    + 2 * config.gdn_value_heads) + config.gdn_value_heads * config.head_v_dim * h
    if not config.use_gate:
        gdn_proj -= h * config.gdn_value_heads * config.head_v_dim
    kv = config.attention.kv_heads * (h // config.attention.num_heads)
    attn_proj = h * (2 * h + 2 * kv)
    mlp = 3 * h * inter
    matmul_params = sum(gdn_proj if t == "gdn" else attn_proj for t in types) + n_layers * mlp
    matmul_params += h * config.vocab_size
    flops = 6.0 * matmul_params
    window = config.attention.window_size or seq_len
    for t in types:
        if t == "attention":
            flops += 6.0 * h * min(seq_len, window)  # causal: half of 12*T*h
        else:
            chunk = 64
            k, v, hv = config.head_dim, config.head_v_dim, config.gdn_value_heads
            flops += 6.0 * hv * (4 * k * v + chunk * (k + v))
    return flops
