"""Tables printed to the terminal: presets, model info, a run's results."""

from __future__ import annotations

from typing import Any

from hybridlm.config import Config


def format_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A GitHub-flavoured markdown table (readable as text, pasteable into docs)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(row):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4g}"
    return str(value)


def human_count(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


def model_parameter_counts(config: Config) -> dict[str, int]:
    """Parameter counts without allocating weights (built on the meta device)."""
    import torch

    from hybridlm.model import HybridLM
    from hybridlm.model.accounting import count_parameters

    with torch.device("meta"):
        return count_parameters(HybridLM(config.model))


def print_presets() -> None:
    from hybridlm.config import PRESETS, preset

    rows = []
    for name in PRESETS:
        c = preset(name)
        m, t = c.model, c.train
        rows.append([name, m.layout_string, f"{100 * m.attention_fraction:.0f}%",
                     human_count(model_parameter_counts(c)["total"]), c.data.seq_len, t.batch_size, t.max_steps,
                     f"{t.lr:g}"])
    print(format_table(["preset", "layout (G=GDN, A=attention)", "attn", "params", "seq", "batch", "steps", "lr"],
                       rows, align="lllrrrrr"))
    print("\nparams at the preset's tokenizer vocabulary (gpt2: 50257)")


def print_info(config: Config) -> None:
    from hybridlm.model.accounting import flops_per_token

    m = config.model
    counts = model_parameter_counts(config)
    print(f"{config.run.name or 'model'}: {m.num_hidden_layers} layers, hidden {m.hidden_size}, vocab {m.vocab_size}")
    print(f"layout   {m.layout_string}   ({100 * m.attention_fraction:.0f}% attention)")
    print("layer map:")
    for i, kind in enumerate(m.layer_types):
        if kind == "gdn":
            desc = (f"Gated DeltaNet  {m.num_heads} key heads x {m.head_dim}, {m.gdn_value_heads} value heads x "
                    f"{m.head_v_dim}, conv {m.conv_size if m.use_short_conv else 'off'}")
        else:
            a = m.attention
            desc = (f"attention       {a.num_heads} heads x {m.attention_head_dim}, {a.kv_heads} kv heads, "
                    f"window {a.window_size or 'none'}, rope {a.rope_theta:g}")
        print(f"  {i:3d} {'A' if kind == 'attention' else 'G'}  {desc}")
    rows = [[k, human_count(v), v] for k, v in counts.items() if v]
    print(format_table(["parameters", "", "exact"], rows, align="lrr"))
    seq = config.data.seq_len
    fpt = flops_per_token(m, seq)
    tokens = config.train.batch_size * seq
    weights_gb = counts["total"] * 16 / 1e9  # fp32 weights + grads + 2 AdamW moments
    act_gb = tokens * m.hidden_size * m.num_hidden_layers * 34 * 2 / 1e9  # bf16 activations, rough
    print(f"\ntraining FLOPs per token (seq {seq}): {fpt / 1e9:.2f} GFLOP")
    print(f"memory estimate (batch {config.train.batch_size} x {seq}): weights+grads+AdamW {weights_gb:.2f} GB, "
          f"activations ~{act_gb:.1f} GB")


def print_results(results: dict[str, Any]) -> None:
    r = results["results"]
    m = results["model"]
    rows = [
        ["experiment", results["experiment"]],
        ["layout", f"{m['layout']} ({100 * m['attention_fraction']:.0f}% attention)"],
        ["parameters", f"{human_count(m['params_total'])} ({m['params_total']:,})"],
        ["steps", r["steps"]],
        ["tokens", f"{r['tokens_processed']:,}"],
        ["best val loss", f"{r['best_val_loss']:.4f} (step {r['best_step']})" if r["best_val_loss"] else None],
        ["final val loss", r["final_val_loss"]],
        ["final val accuracy", r["final_val_accuracy"]],
        ["final val perplexity", r["final_val_perplexity"]],
        ["throughput", f"{r['tokens_per_s']:,.0f} tokens/s" if r["tokens_per_s"] else None],
        ["steady throughput", f"{r['tokens_per_s_steady']:,.0f} tokens/s (after the first log interval)"
         if r.get("tokens_per_s_steady") else None],
        ["MFU", f"{100 * r['mfu']:.1f}%" if r.get("mfu") else None],
        ["time", f"{r['total_time_s']:.1f} s"],
        ["kernels", results["environment"].get("kernel_backend")],
    ]
    print(format_table(["result", "value"], rows, align="ll"))
