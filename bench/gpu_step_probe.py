"""Time individual training steps of our model on the GPU (first steps include Triton autotuning and
TileLang compilation): `TRITON_PRINT_AUTOTUNING=1 python bench/gpu_step_probe.py --preset h100_deltanet`.
Stacks are dumped every --traceback-every seconds, so a stuck first step shows where it is.
`build_step` is also used by bench_gpu_train.py's profiler."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch


def build_step(preset_name: str, batch_size: int = 48,
               batches: list[torch.Tensor] | None = None) -> tuple[Callable[[], torch.Tensor], int]:
    """One bf16-autocast training step (forward, backward, clip, AdamW) and the vocab. It cycles through
    `batches` ([B, T + 1] token tensors, as the baseline loop gets them) or, without them, repeats one
    batch of random tokens (step time does not depend on the token values, the loss does)."""
    from hybridlm.config import preset
    from hybridlm.model import HybridLM
    from hybridlm.train.optim import build_optimizer
    from hybridlm.train.precision import resolve_precision

    resolve_precision("bf16", torch.device("cuda"))  # the trainer's CUDA settings (TF32 for fp32 matmuls)

    config = preset(preset_name)
    model = HybridLM(config.model).cuda()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cuda")
    if batches is None:
        batches = [torch.randint(0, config.model.vocab_size, (batch_size, 1025))]
    counter = iter(range(1 << 30))

    def step() -> torch.Tensor:
        batch = batches[next(counter) % len(batches)].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch[:, :-1], labels=batch[:, 1:], return_logits=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return step, config.model.vocab_size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="h100_deltanet")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--traceback-every", type=float, default=60.0,
                        help="print every thread's stack every N seconds (shows where a slow first step sits)")
    args = parser.parse_args()
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(args.traceback_every, repeat=True, file=sys.stderr)
    step, _ = build_step(args.preset, args.batch)
    for i in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"step {i}: {dt * 1e3:8.1f} ms  {args.batch * 1024 / dt:10,.0f} tok/s  "
              f"loss {loss.item():.3f}  peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
