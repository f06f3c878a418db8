"""Settings of the optimisation loop, the run's identity, and where FLA comes from."""

from __future__ import annotations

from dataclasses import dataclass, field

from hybridlm.config.read_only import ReadOnlyWhenResolved

PRECISIONS = ("auto", "fp32", "bf16", "bf16-pure")
NAN_POLICIES = ("stop", "skip")
SCHEDULES = ("linear", "cosine", "constant")
PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
ACTIVATION_CHECKPOINTING = ("none", "full", "selective")


@dataclass
class FsdpConfig(ReadOnlyWhenResolved):
    """FSDP2 (`fully_shard`) settings; they apply when train.parallel resolves to "fsdp"."""

    # free each block's gathered weights after its forward (gather again for backward): less memory,
    # one more all-gather per block; false keeps them from forward to backward (ZeRO-2 style)
    reshard_after_forward: bool = True
    # HSDP: the ranks form a (replicate x shard) mesh; weights are sharded within a group of
    # WORLD_SIZE / replicate ranks (e.g. one node) and replicated across the groups. 1: plain FSDP
    replicate: int = 1
    # under precision "bf16": gather weights in bf16 and reduce gradients in float32 (the master weights
    # and AdamW stay float32); false gathers float32 weights and leaves bf16 to autocast, as DDP does
    mixed_precision: bool = True


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
    # several processes (torchrun): "auto" = none on one process; with several, FSDP2 when the model and
    # AdamW state would not fit comfortably on one device (train/parallel.py), else DDP; "ddp"; "fsdp"; "none"
    parallel: str = "auto"
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    # recompute activations in backward, per block: "full" (keep only each block's input) or
    # "selective" (keep matmul and attention outputs, recompute norms and element-wise ops); see
    # train/activation_checkpointing.py. Same losses and gradients; less memory, more compute
    activation_checkpointing: str = "none"
    # a non-finite loss or gradient norm: "stop" the run (weights are never saved non-finite), or
    # "skip" that update (counted in the metrics) and stop after `nan_max_skips` in a row
    nan_policy: str = "stop"
    nan_max_skips: int = 10
    tensorboard: bool = False
    wandb_project: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.fsdp, dict):
            self.fsdp = FsdpConfig(**self.fsdp)


@dataclass
class RunConfig(ReadOnlyWhenResolved):
    """What the run is called; the output directory is given on the command line or to `train`."""

    name: str = ""
    description: str = ""


@dataclass
class FlaConfig(ReadOnlyWhenResolved):
    """Where `import fla` should come from: pip (path unset) or a local clone of the repository."""

    path: str | None = None
