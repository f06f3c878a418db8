"""The seam for multi-process training: who am I, and am I the one who writes files.

Single-process runs see rank 0 of 1. Under torchrun the environment variables tell the rank;
logging, checkpointing and data sharding ask here, so DDP/FSDP2 can be added to the loop
without rewriting it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_info() -> ProcessInfo:
    return ProcessInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                       local_rank=int(os.environ.get("LOCAL_RANK", 0)))
