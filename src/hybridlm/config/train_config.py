"""Settings of the optimisation loop, the run's identity, and where FLA comes from."""

from __future__ import annotations

from dataclasses import dataclass

from hybridlm.config.read_only import ReadOnlyWhenResolved

PRECISIONS = ("auto", "fp32", "bf16", "bf16-pure")
NAN_POLICIES = ("stop", "skip")
SCHEDULES = ("linear", "cosine", "constant")


@dataclass
class TrainConfig(ReadOnlyWhenResolved):
    """AdamW with warmup then decay to `min_lr_ratio * lr`; defaults follow the reference runs."""

    max_steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "linear"
    min_lr_ratio: float = 0.1
    batch_size: int = 48
    grad_accum: int = 1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_interval: int = 50
    eval_batches: int = 20
    save_interval: int = 500
    keep_checkpoints: int = 2
    log_interval: int = 10
    seed: int = 42
    # auto: bf16 autocast with float32 master weights on CUDA, float32 on CPU;
    # bf16-pure: weights and optimizer state in bf16, as the reference scripts did
    precision: str = "auto"
    device: str = "auto"
    # torch.compile per block: true / false, or "auto" (on where measured faster; see train/setup.py)
    compile: bool | str = "auto"
    # several processes (torchrun): "auto" = DDP when WORLD_SIZE > 1, else none; "ddp"; "none"
    parallel: str = "auto"
    # a non-finite loss or gradient norm: "stop" the run (weights are never saved non-finite), or
    # "skip" that update (counted in the metrics) and stop after `nan_max_skips` in a row
    nan_policy: str = "stop"
    nan_max_skips: int = 10
    tensorboard: bool = False
    wandb_project: str | None = None


@dataclass
class RunConfig(ReadOnlyWhenResolved):
    """What the run is called; the output directory is given on the command line or to `train`."""

    name: str = ""
    description: str = ""


@dataclass
class FlaConfig(ReadOnlyWhenResolved):
    """Where `import fla` should come from: pip (path unset) or a local clone of the repository."""

    path: str | None = None
