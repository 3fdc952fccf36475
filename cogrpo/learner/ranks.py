"""Data-parallel ranks as the learner sees them. Every rank holds the iteration's whole batch and draws the same
minibatches as one process does; each trains its share of each minibatch and divides its share's sums by the ranks'
mean count, so the mean of the ranks' gradients (what data parallelism applies) is exactly the gradient of the whole
minibatch's loss in one process, and so is the mean of the ranks' loss and mean metrics. Free of any runtime: the
sum over ranks is handed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    total: Callable[[torch.Tensor], torch.Tensor] | None = None  # a tensor's elementwise sum over the ranks

    def share(self, chunk: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a minibatch's sample indices (sizes differ by at most one)."""
        return chunk if self.world == 1 else chunk.tensor_split(self.world)[self.rank]

    def denominator(self, counts: torch.Tensor) -> torch.Tensor:
        """What this rank divides its share's sums by, for the counts of its share: the mean of the ranks' counts,
        i.e. the whole minibatch's over the world size (one process: the counts themselves)."""
        return counts if self.world == 1 else self.total(counts.float()) / self.world


ONE_PROCESS = Ranks()
