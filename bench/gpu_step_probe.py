"""Time individual training steps of our model on the GPU (first steps include Triton autotuning and
TileLang compilation): `TRITON_PRINT_AUTOTUNING=1 python bench/gpu_step_probe.py --preset h100_deltanet`.
Stacks are dumped every --traceback-every seconds, so a stuck first step shows where it is."""

from __future__ import annotations

import argparse
import time

import torch


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

    from hybridlm.config import preset
    from hybridlm.model import HybridLM
    from hybridlm.train.optim import build_optimizer

    config = preset(args.preset)
    model = HybridLM(config.model).cuda()
    opt = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), 1e-8, "cuda")
    batch = torch.randint(0, config.model.vocab_size, (args.batch, 1025), device="cuda")
    for step in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(batch[:, :-1], labels=batch[:, 1:], return_logits=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(f"step {step}: {dt * 1e3:8.1f} ms  {args.batch * 1024 / dt:10,.0f} tok/s  "
              f"loss {loss.item():.3f}  peak {torch.cuda.max_memory_allocated() / 1e9:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
