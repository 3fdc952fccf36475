"""An iteration's rollouts, and an evaluation's samples, under the current joint policy: in batches of
sampler.batch_size with the seeds of cogrpo/rollout/batching.py, in any runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from cogrpo.proto.family import Family
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.batching import repeat_each, slices
from cogrpo.rollout.schedule import Schedule
from cogrpo.rollout.steps import StepPlan, full_plan


def collect(family: Family, model: torch.nn.Module, schedule: Schedule, prompts: list[str], samples_per_prompt: int,
            plan: StepPlan, seed: int, iteration: int, batch_size: int) -> Trajectory:
    """Trajectories for prompts[i] repeated samples_per_prompt times, in that order (sample k belongs to group
    k // samples_per_prompt)."""
    repeated = repeat_each(prompts, samples_per_prompt)
    return Trajectory.cat([family.sample(model, repeated[s.start: s.stop], schedule, plan, s.seed)
                           for s in slices(len(repeated), batch_size, seed, iteration)])


@dataclass
class Evaluation:
    """One split decoded with the schedule's mean action: the family's summary and per-sample rows (GenEval's on the
    shapes world), the samples in scoring batches of batch_size (record-major), the knob values the schedule
    applied per step, averaged over the samples, and the first 16 records' first images (None for a family that
    makes no images)."""

    summary: dict
    rows: list[dict]
    batches: list
    knobs: torch.Tensor
    preview: np.ndarray | None


def join(batches: list):
    """Sample batches as one: an array of images, or a list of texts."""
    return np.concatenate(batches) if isinstance(batches[0], np.ndarray) else [s for b in batches for s in b]


@torch.no_grad()
def decode_prompts(family: Family, model: torch.nn.Module, schedule: Schedule, prompts: list[str], steps: int,
                   seed: int, batch_size: int, progress: Callable[[int], object] | None = None
                   ) -> tuple[list, list[Trajectory]]:
    """Samples for `prompts`, every step sampled, in batches of batch_size seeded seed + k (so they depend on
    nothing else): the decoded batches and their trajectories. progress: told each batch's sample count once it is
    decoded (the CLI's progress bar; this layer draws nothing)."""
    plan = full_plan(steps)
    batches, trajectories = [], []
    for s in slices(len(prompts), batch_size, seed, None):
        trajectories.append(family.sample(model, prompts[s.start: s.stop], schedule, plan, s.seed))
        batches.append(family.decode(model, trajectories[-1]))
        if progress is not None:
            progress(s.stop - s.start)
    return batches, trajectories


def evaluate(family: Family, model: torch.nn.Module, schedule: Schedule, records: list[dict], steps: int, seed: int,
             batch_size: int, n_per_prompt: int, progress: Callable[[int], object] | None = None) -> Evaluation:
    prompts = repeat_each([r["prompt"] for r in records], n_per_prompt)
    batches, trajectories = decode_prompts(family, model, schedule, prompts, steps, seed, batch_size, progress)
    samples = join(batches)
    summary, rows = family.summarize(records, samples)
    preview = samples[::n_per_prompt][:16] if family.samples == "images" else None
    return Evaluation(summary, rows, batches, torch.cat([t.knobs for t in trajectories]).mean(0), preview)
