"""The non-finite guard: a NaN / inf loss or gradient norm stops the run (or skips that update).

The flags live on the device and are read only where the loop syncs anyway (log intervals) and
before every evaluation and save, so the guard costs no host sync per step. `stop` names the
first bad step; `skip` drops each bad update (AdamW's own `found_inf` input when the optimizer
is fused, as GradScaler uses it; otherwise one host read per step, which on a CPU costs nothing)
and stops after `max_skips` bad updates in a row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from hybridlm.errors import NonFiniteError


class NonFiniteGuard:
    def __init__(self, policy: str, max_skips: int, device: torch.device):
        self.policy = policy
        self.max_skips = max_skips
        zero = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = zero - 1       # stop: first step whose loss or grad norm was not finite
        self.skipped = zero.clone()     # skip: updates dropped so far
        self.in_a_row = zero.clone()    # skip: the current streak of dropped updates
        self.longest = zero.clone()     # skip: the longest streak since the last check

    @staticmethod
    def finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(loss) & torch.isfinite(grad_norm.to(loss.device))

    def step_optimizer(self, optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
        """`optimizer.step()`, except that under `skip` a non-finite update is dropped entirely."""
        if self.policy != "skip":
            optimizer.step()
        elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused AdamW: skipped on the device
            optimizer.found_inf = (~finite).float()
            optimizer.step()
            optimizer.found_inf = None
        elif bool(finite):
            optimizer.step()

    def record(self, step: int, finite: torch.Tensor) -> None:
        bad = ~finite
        if self.policy == "skip":
            self.skipped += bad
            self.in_a_row.mul_(bad).add_(bad)
            torch.maximum(self.longest, self.in_a_row, out=self.longest)
        else:
            self.first_bad.copy_(torch.where(bad & (self.first_bad < 0), step, self.first_bad))

    def check(self, last_good: Callable[[], str]) -> int:
        """Raise NonFiniteError if the run must stop; return the number of skipped updates (one sync)."""
        first_bad, skipped, longest = (int(v) for v in torch.stack([self.first_bad, self.skipped, self.longest]).tolist())
        if first_bad >= 0:
            raise NonFiniteError(f"the loss or gradient norm became non-finite at step {first_bad}; training stopped "
                                 f"and no checkpoint after it was written. {last_good()}")
        if longest >= self.max_skips:
            raise NonFiniteError(f"{longest} updates in a row had a non-finite loss or gradient norm (train.nan_max_skips"
                                 f"={self.max_skips}); training stopped. {last_good()}")
        self.longest.copy_(self.in_a_row)
        return skipped

    def state_dict(self) -> dict[str, int]:
        return {"skipped": int(self.skipped), "in_a_row": int(self.in_a_row)}

    def load_state_dict(self, state: dict[str, int] | None) -> None:
        if state:
            self.skipped.fill_(int(state.get("skipped", 0)))
            self.in_a_row.fill_(int(state.get("in_a_row", 0)))
            self.longest.copy_(self.in_a_row)
