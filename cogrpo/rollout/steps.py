"""Which decoding steps are trained each iteration: all; a random fraction (DanceGRPO), one subset per iteration
or one per sample; or a MixGRPO sliding window, with the steps outside it decoded deterministically or
stochastically but untrained and, in flash mode, fewer steps after it, which a flow model takes with a
second-order solver (MixGRPO-Flash); or none, every step deterministic (a likelihood-free objective's rollouts)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import torch

from cogrpo.proto.config import Config, StepSubsetConfig


@dataclass(frozen=True)
class StepPlan:
    plan: list[int]  # schedule steps executed, in order
    stochastic: torch.Tensor  # (len(plan),) bool: sampled steps (the others decode greedily)
    trained: list[int]  # positions in `plan` whose log-probs may enter the loss (every sample's, or any sample's)
    per_sample: tuple[str, int] | None = None  # (key, count): each sample trains its own `count` of `trained`
    second_order: torch.Tensor | None = None  # (len(plan),) bool: deterministic steps a flow model takes by
    # DPM-Solver++(2M) (None: none); a masked model decodes them greedily either way
    noise_group: int = 1  # consecutive samples of a batch that start from the same noise (a flow model's)

    def trained_mask(self, samples: int) -> torch.Tensor:
        """(samples, len(plan)) bool: the steps each sample of the iteration trains (sample k: the k-th rollout)."""
        mask = torch.zeros(samples, len(self.plan), dtype=torch.bool)
        if self.per_sample is None:
            mask[:, self.trained] = True
            return mask
        key, count = self.per_sample
        for k in range(samples):
            mask[k, random.Random(f"{key}:{k}").sample(self.trained, count)] = True
        return mask


def full_plan(steps: int) -> StepPlan:
    """Every step executed, sampled and trained."""
    return StepPlan(list(range(steps)), torch.ones(steps, dtype=torch.bool), list(range(steps)))


def window_start(config: StepSubsetConfig, steps: int, iteration: int, seed: int) -> int:
    """MixGRPO's progressive window moves by `stride` every `shift_every` iterations, then stays at the end (stride
    0: it stays at the start); its ablation's random window lands anywhere, afresh every `shift_every` iterations."""
    if config.shift == "random":
        return random.Random(f"{seed}:window:{iteration // config.shift_every}").randint(0, steps - config.window)
    return min((iteration // config.shift_every) * config.stride, steps - config.window)


def step_plan(config: StepSubsetConfig, steps: int, iteration: int, seed: int) -> StepPlan:
    if config.mode == "all":
        return full_plan(steps)
    if config.mode == "none":
        return StepPlan(list(range(steps)), torch.zeros(steps, dtype=torch.bool), [])
    if config.mode == "random":
        k = max(1, round(config.fraction * steps))
        every = torch.ones(steps, dtype=torch.bool)
        if config.random_per == "sample":
            return StepPlan(list(range(steps)), every, list(range(steps)), per_sample=(f"{seed}:{iteration}", k))
        return StepPlan(list(range(steps)), every, sorted(random.Random(f"{seed}:{iteration}").sample(range(steps), k)))
    start = window_start(config, steps, iteration, seed)
    end = start + config.window
    after = list(range(end, steps))
    if config.flash_ratio is not None and after:
        keep = max(1, math.ceil(len(after) * config.flash_ratio))
        # evenly spaced over the post-window segment, always ending on the last schedule step
        after = sorted({after[round(i * (len(after) - 1) / max(1, keep - 1))] for i in range(keep)} | {steps - 1})
    plan = list(range(end)) + after
    inside = torch.tensor([start <= s < end for s in plan])
    stochastic = inside if config.outside == "deterministic" else torch.ones(len(plan), dtype=torch.bool)
    second_order = None
    if config.flash_ratio is not None:
        second_order = torch.tensor([s >= end for s in plan]) & ~stochastic
    return StepPlan(plan, stochastic, [i for i, s in enumerate(plan) if start <= s < end], second_order=second_order)


def rollout_plan(config: Config, iteration: int) -> StepPlan:
    """An iteration's step plan, with its groups' starting noise shared where the sampler asks."""
    plan = step_plan(config.algo.steps, config.sampler.steps, iteration, config.seed)
    return replace(plan, noise_group=config.algo.samples_per_prompt) if config.sampler.shared_noise else plan
