"""Sweeps: many runs under equal conditions, resumable, on warm workers, with ranked reports.

    hybridlm sweep lr   --presets h100_deltanet,h100_hybrid_sparse --lrs 5e-4,1e-3,2e-3 --out runs/lr
    hybridlm sweep arch --layouts exp7 --lr-from runs/lr --out runs/arch
    hybridlm sweep grid --preset tiny --set-grid 'train.lr=[1e-3,2e-3]' --out runs/grid
    hybridlm compare runs/arch runs/other_run

Layers, each importing only from the ones before it (tests/test_sweep_layers.py checks this):
1. foundations: `specs` (model specs, member names), `conditions` (equal token budget and data),
   `estimate` (time guesses), `state` (Member, SweepPlan, sweep.json);
2. records: `records` (a read-only view of run directories, rankings), `lr_from` (lrs from an LR sweep);
3. plan: `plan` (the members of a sweep), `configs` (each member's planned config file), `budget`
   (unique training tokens and epochs), `devices` (the slots members run in);
4. report: `plots`, `summary`, `overview` (--dry-run), `compare`;
5. run: `queue` (jobs over slots), `worker` (the warm process), `processes` (its handle, torchrun),
   `progress` (the view), `job` (one member), `runner` (the sweep);
6. `cli`.
"""

from hybridlm.sweep.state import Member, SweepPlan

__all__ = ["Member", "SweepPlan"]
