"""Schedules decide the knobs of each decoding step. The hand schedule is fixed; a learned schedule policy
(cogrpo.models.schedule_policy) follows the same protocol and also returns its sampled action and log-prob."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from cogrpo.proto.config import SamplerConfig
from cogrpo.proto.messages import KNOBS, Decision


class Schedule(Protocol):
    """step: index into a schedule of `steps` steps; explore: sample the action (else act deterministically)."""

    def decide(self, step: int, steps: int, masked_fraction: torch.Tensor, prompt_feat: torch.Tensor,
               explore: bool, generator: torch.Generator) -> Decision: ...


def hand_knobs(config: SamplerConfig, steps: int) -> torch.Tensor:
    """(steps, len(KNOBS)): the cosine mask schedule, constant temperature and guidance, and a re-mask
    temperature decaying linearly from its initial value (kept positive, so residual squashing is exact)."""
    t = torch.arange(steps, dtype=torch.float64)
    table = torch.empty(steps, len(KNOBS), dtype=torch.float64)
    table[:, KNOBS.index("remask_ratio")] = torch.cos(math.pi / 2 * (t + 1) / steps)
    table[-1, KNOBS.index("remask_ratio")] = 0.0  # exactly: the last step commits everything
    table[:, KNOBS.index("temperature")] = config.temperature
    table[:, KNOBS.index("remask_temperature")] = config.remask_temperature * (1 - t / steps)
    table[:, KNOBS.index("guidance")] = config.guidance
    return table.float()


class HandSchedule:
    """The fixed schedule: the same knobs for every sample, no action, no log-prob."""

    def __init__(self, config: SamplerConfig, steps: int | None = None):
        self.steps = steps or config.steps
        self.table = hand_knobs(config, self.steps)

    def decide(self, step, steps, masked_fraction, prompt_feat, explore, generator):
        if steps != self.steps:
            raise ValueError(f"hand schedule built for {self.steps} steps, asked for {steps}")
        batch = masked_fraction.shape[0]
        return Decision(knobs=self.table[step].expand(batch, -1).clone(),
                        action=torch.zeros(batch, 0), logp=torch.zeros(batch))
