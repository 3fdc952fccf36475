"""Which decoding steps are trained each iteration: all; a random fraction (DanceGRPO); or a MixGRPO sliding
window, with greedy decoding outside it and, in flash mode, fewer steps after it."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from cogrpo.proto.config import StepSubsetConfig


@dataclass(frozen=True)
class StepPlan:
    plan: list[int]  # schedule steps executed, in order
    stochastic: torch.Tensor  # (len(plan),) bool: sampled steps (the others decode greedily)
    trained: list[int]  # positions in `plan` whose log-probs enter the loss


def window_start(config: StepSubsetConfig, steps: int, iteration: int) -> int:
    """MixGRPO's progressive window: moves by `stride` every `shift_every` iterations, then stays at the end."""
    return min((iteration // config.shift_every) * config.stride, steps - config.window)


def step_plan(config: StepSubsetConfig, steps: int, iteration: int, seed: int) -> StepPlan:
    if config.mode == "all":
        return StepPlan(list(range(steps)), torch.ones(steps, dtype=torch.bool), list(range(steps)))
    if config.mode == "random":
        k = max(1, round(config.fraction * steps))
        trained = sorted(random.Random(f"{seed}:{iteration}").sample(range(steps), k))
        return StepPlan(list(range(steps)), torch.ones(steps, dtype=torch.bool), trained)
    start = window_start(config, steps, iteration)
    end = start + config.window
    after = list(range(end, steps))
    if config.flash_ratio is not None and after:
        keep = max(1, math.ceil(len(after) * config.flash_ratio))
        # evenly spaced over the post-window segment, always ending on the last schedule step
        after = sorted({after[round(i * (len(after) - 1) / max(1, keep - 1))] for i in range(keep)} | {steps - 1})
    plan = list(range(end)) + after
    stochastic = torch.tensor([start <= s < end for s in plan])
    return StepPlan(plan, stochastic, [i for i, s in enumerate(plan) if start <= s < end])
