"""Collect one iteration's groups: G trajectories per prompt under the current joint policy."""

from __future__ import annotations

import torch

from cogrpo.models.interface import MaskedTokenModel
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.sampler import generate
from cogrpo.rollout.schedule import Schedule
from cogrpo.rollout.steps import StepPlan


def rollout_seed(seed: int, iteration: int, batch: int) -> int:
    return (seed * 1_000_003 + iteration * 1_009 + batch) % (2**62)


def repeat_each(items: list, n: int) -> list:
    """Each item n times in a row: the order every sample list follows (sample k belongs to item k // n)."""
    return [item for item in items for _ in range(n)]


def collect(model: MaskedTokenModel, schedule: Schedule, prompts: list[str], group_size: int, steps: int,
            plan: StepPlan, seed: int, iteration: int, batch_size: int, sampler: str) -> Trajectory:
    """Trajectories for prompts[i] repeated group_size times, in that order (sample k belongs to group
    k // group_size), generated in batches of batch_size with reproducible seeds."""
    repeated = repeat_each(prompts, group_size)
    parts = []
    for k, start in enumerate(range(0, len(repeated), batch_size)):
        cond = model.encode_prompts(repeated[start: start + batch_size])
        parts.append(generate(model, cond, schedule, steps, rollout_seed(seed, iteration, k), sampler,
                              stochastic=plan.stochastic, plan=plan.plan))
    return Trajectory.cat(parts)


def group_ids(n_prompts: int, group_size: int) -> torch.Tensor:
    return torch.arange(n_prompts).repeat_interleave(group_size)
