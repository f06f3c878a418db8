"""Sweeps: many runs under equal conditions, resumable, optionally in parallel, with ranked reports.

    hybridlm sweep lr   --presets h100_deltanet,h100_hybrid_sparse --lrs 5e-4,1e-3,2e-3 --out runs/lr
    hybridlm sweep arch --layouts exp7 --lr-from runs/lr --out runs/arch
    hybridlm sweep grid --preset tiny --set-grid 'train.lr=[1e-3,2e-3]' --out runs/grid
    hybridlm compare runs/arch runs/other_run

One concept per module: `specs` (what a model spec / member name is), `plan` (the members of a
sweep), `conditions` (equal token budget and data), `lr_from` (learning rates from an LR sweep),
`state` (sweep.json), `devices` + `queue` (parallel slots), `runner` (member subprocesses),
`estimate` (time guesses), `progress` (the sweep view), `summary` / `plots` / `compare` (reports).
"""

from hybridlm.sweep.plan import Member, SweepPlan

__all__ = ["Member", "SweepPlan"]
