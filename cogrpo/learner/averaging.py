"""An exponential moving average of theta: with `algo.ema_decay` > 0 it is the model a run evaluates and exports.
From one block of updates to the next the live model's held-out score swings by as much as 0.09 (BENCHMARKS.md);
the average keeps the trend without the swing. Rollouts still sample the live weights, so training stays
on-policy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class WeightAverage:
    """Updated once per iteration that trained theta, from the full state (every tensor whole, as rank 0 of a
    ZeRO-3 learner gathers it). The first update copies the weights; floating tensors are averaged in fp32, other
    buffers follow the live ones."""

    def __init__(self, decay: float):
        self.decay = decay
        self.state: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, state: dict[str, torch.Tensor]) -> None:
        if self.state is None:
            self.state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype, copy=True)
                          for k, v in state.items()}
            return
        for name, value in state.items():
            if value.is_floating_point():
                self.state[name].lerp_(value.detach().to("cpu", torch.float32), 1.0 - self.decay)
            else:
                self.state[name].copy_(value)


@contextmanager
def weights_swapped_in(model: torch.nn.Module, state: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Run the block with `state` loaded into model (None: the live weights), then put the live weights back."""
    if state is None:
        yield
        return
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    try:
        yield
    finally:
        model.load_state_dict(live)
