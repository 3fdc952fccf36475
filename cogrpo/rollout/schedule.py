"""Schedules decide the knobs of each decoding step. The hand schedule is a family's fixed table; the learned
schedule policy (cogrpo.models.schedule_policy) follows the same protocol and also returns its sampled action
and log-prob. `schedule_for` and `rollout_schedule` are the one rule, in every runtime, for which schedule decodes."""

from __future__ import annotations

from typing import Protocol

import torch

from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.family import Family
from cogrpo.proto.messages import Decision, Trajectory


class Schedule(Protocol):
    """step: index into a schedule of `steps` steps; state (B, F) and prompt_feat (B, D): what the policy reads,
    as its `encoder` makes them (None: the family's plainest reading); explore: sample the action (else act
    deterministically); effective (K,) bool over the family's knobs: which could change the outcome at this step."""

    encoder: torch.nn.Module | None

    def decide(self, step: int, steps: int, state: torch.Tensor, prompt_feat: torch.Tensor, explore: bool,
               generator: torch.Generator, effective: torch.Tensor) -> Decision: ...


class DecisionLog:
    """What a sampler records of the schedule per executed step (what it read, its knobs, action, log-prob and
    effective dimensions), turned with the family's own tensors into the Trajectory every family returns."""

    def __init__(self, prompt_feat: torch.Tensor):
        self.prompt_feat = prompt_feat
        self.states: list[torch.Tensor] = []
        self.decisions: list[Decision] = []

    def record(self, state: torch.Tensor, decision: Decision) -> None:
        self.states.append(state)
        self.decisions.append(decision)

    def trajectory(self, tensors: dict[str, torch.Tensor], stochastic: torch.Tensor, plan: list[int], steps: int,
                   seed: int) -> Trajectory:
        d = self.decisions
        return Trajectory(
            tensors=tensors, knobs=torch.stack([x.knobs for x in d], 1), sched_state=torch.stack(self.states, 1),
            prompt_feat=self.prompt_feat, sched_action=torch.stack([x.action for x in d], 1),
            sched_logp=torch.stack([x.logp for x in d], 1), sched_mask=torch.stack([x.mask for x in d]),
            stochastic=stochastic, step_index=torch.tensor(plan), schedule_steps=steps, seed=seed)


class HandSchedule:
    """The fixed schedule: the same knobs for every sample, no action, no log-prob. A trajectory decoded with it
    records what `encoder` reads, as the schedule policy's would."""

    def __init__(self, table: torch.Tensor, encoder: torch.nn.Module | None = None):
        self.table, self.encoder = table, encoder

    def decide(self, step, steps, state, prompt_feat, explore, generator, effective):
        if steps != len(self.table):
            raise ValueError(f"hand schedule built for {len(self.table)} steps, asked for {steps}")
        batch = state.shape[0]
        return Decision(knobs=self.table[step].expand(batch, -1).clone(), action=torch.zeros(batch, 0),
                        logp=torch.zeros(batch), mask=torch.zeros(0, dtype=torch.bool))


def schedule_for(config: Config, family: Family, policy: SchedulePolicy, steps: int,
                 sample_actions: bool) -> Schedule:
    """The hand schedule for model-only GRPO; otherwise the schedule policy around the hand schedule."""
    if config.algo.mode == "grpo":
        return HandSchedule(family.hand_schedule(steps), policy.encoder)
    return PolicySchedule(policy, family.hand_schedule(steps), sample_actions)


def rollout_schedule(config: Config, family: Family, policy: SchedulePolicy, iteration: int) -> Schedule:
    """The schedule an iteration's rollouts decode with: phi's std as of this iteration, its actions sampled unless
    phi is frozen and `algo.frozen_schedule` asks for its mean action."""
    policy.decay_std(iteration)
    return schedule_for(config, family, policy, config.sampler.steps,
                        config.algo.samples_schedule_actions(iteration))
