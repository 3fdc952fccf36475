"""pi_phi, the schedule policy: per decoding step, a diagonal Gaussian over unconstrained actions a, one per
learned knob of the model family, squashed around the hand schedule h:

  unit knobs (a ratio in (0, 1))  = sigmoid(logit(h) + a)          positive knobs = softplus(softplus^-1(h) + a)

It reads the step position (sinusoidal features of t / T) and what its `encoder` (the family's) makes of the
sample's state and prompt: a masked model's fraction still masked, optionally the pooled canvas, and the prompt's
features. The encoder's frozen tables are buffers of the policy, so they travel and are saved with its weights.
The output layer starts at zero, so a fresh policy's mean action is 0 and it reproduces the hand schedule
exactly; the likelihood used for GRPO ratios is that of a (the squashing's Jacobian does not depend on phi, so it
cancels in every ratio). Action dimensions that cannot change the outcome at a step (a re-mask knob when everything
left is committed) act their mean and carry no log-prob.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.kinds import Knob
from cogrpo.proto.messages import Decision

_EPS = 1e-4


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def _unit_moves(h: torch.Tensor) -> torch.Tensor:
    """A ratio of exactly 0 or 1 (the last step commits everything) is not the policy's to move."""
    return (h > 0) & (h < 1)


def squash(hand: torch.Tensor, action: torch.Tensor, knob_index: list[int], bounds: list[str]) -> torch.Tensor:
    """Knob values (..., K) from the hand values (..., K) and actions (..., len(knob_index))."""
    knobs = hand.clone()
    for j, (k, bound) in enumerate(zip(knob_index, bounds)):
        if bound == "unit":
            h = hand[..., k]
            moved = torch.sigmoid(torch.logit(h.clamp(_EPS, 1 - _EPS)) + action[..., j])
            knobs[..., k] = torch.where(_unit_moves(h), moved, h)
        else:
            h = hand[..., k].clamp(min=_EPS)
            knobs[..., k] = F.softplus(_inverse_softplus(h) + action[..., j])
    return knobs


def squash_log_det(hand: torch.Tensor, action: torch.Tensor, knob_index: list[int],
                   bounds: list[str]) -> torch.Tensor:
    """log |d knobs / d action| summed over learned knobs: turns log p(a) into the density of the knob values."""
    total = torch.zeros(action.shape[:-1])
    for j, (k, bound) in enumerate(zip(knob_index, bounds)):
        if bound == "unit":
            h = hand[..., k]
            z = torch.logit(h.clamp(_EPS, 1 - _EPS)) + action[..., j]
            total = total + torch.where(_unit_moves(h), F.logsigmoid(z) + F.logsigmoid(-z), 0.0)
        else:
            z = _inverse_softplus(hand[..., k].clamp(min=_EPS)) + action[..., j]
            total = total + F.logsigmoid(z)
    return total


def unit_knobs_that_move(hand_row: torch.Tensor, knobs: tuple[Knob, ...]) -> torch.Tensor:
    """(K,) bool over a family's knobs: False for a unit knob whose hand value squashing leaves fixed."""
    return torch.tensor([knob.bounds != "unit" or bool(_unit_moves(hand_row[k])) for k, knob in enumerate(knobs)])


class ScheduleEncoder(nn.Module):
    """What the schedule policy reads of a prompt, for every family: the model's prompt features through its live
    weights, or (`prompt_input: frozen`) through a copy of them taken as the model was built, a buffer that
    travels and is saved with the policy. A family's subclass adds `state`, what phi reads of a sample mid-decode
    (`state_dim` features)."""

    def __init__(self, model: nn.Module, config: SchedulePolicyConfig, state_dim: int):
        super().__init__()
        self.register_buffer("prompt_table", model.prompt_table() if config.prompt_input == "frozen" else None)
        self.state_dim = state_dim
        self.prompt_dim = model.prompt_feature_dim

    def prompt(self, model: nn.Module, cond: torch.Tensor) -> torch.Tensor:
        """(B, D) on the CPU, from CPU conditioning."""
        if self.prompt_table is None:
            return model.prompt_features_cpu(cond)
        return model.prompt_features(cond, self.prompt_table)


class SchedulePolicy(nn.Module):
    def __init__(self, config: SchedulePolicyConfig, knobs: tuple[Knob, ...], encoder: nn.Module):
        """encoder: the family's reader of states and prompts, with `state_dim` and `prompt_dim`."""
        super().__init__()
        self.config = config
        self.encoder = encoder
        names = [knob.name for knob in knobs]
        learn = config.learn or tuple(names)
        unknown = [name for name in learn if name not in names]
        if unknown:
            raise InputError(f"schedule_policy.learn: the model family has no knob {unknown[0]!r} "
                             f"(its knobs: {', '.join(names)})")
        self.knob_index = [names.index(name) for name in learn]
        self.bounds = [knobs[k].bounds for k in self.knob_index]
        n_in = config.time_features + encoder.state_dim + encoder.prompt_dim
        self.net = nn.Sequential(nn.Linear(n_in, config.hidden), nn.GELU(), nn.Linear(config.hidden, config.hidden),
                                 nn.GELU(), nn.Linear(config.hidden, len(self.knob_index)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        log_std = torch.full((len(self.knob_index),), math.log(config.std_init))
        if config.std_mode == "learned":
            self.log_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_std", log_std)

    def decay_std(self, iteration: int) -> None:
        """For std_mode 'decayed': std = max(std_init * std_decay ** iteration, std_min)."""
        if self.config.std_mode == "decayed":
            std = max(self.config.std_init * self.config.std_decay ** iteration, self.config.std_min)
            self.log_std.fill_(math.log(std))

    def time_features(self, step: torch.Tensor, steps: int) -> torch.Tensor:
        freqs = torch.arange(1, self.config.time_features // 2 + 1, dtype=torch.float32)
        angle = 2 * math.pi * (step.float()[..., None] / steps) * freqs / 2
        return torch.cat([torch.sin(angle), torch.cos(angle)], -1)

    def forward(self, step: torch.Tensor, steps: int, state: torch.Tensor,
                prompt_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the action; step (...), state (..., F) and prompt_feat (..., D) share leading shapes."""
        x = torch.cat([self.time_features(step, steps), state, prompt_feat], -1)
        return self.net(x), self.log_std.exp().expand(*x.shape[:-1], -1)

    def learned(self, effective: torch.Tensor) -> torch.Tensor:
        """The learned dimensions' share of a (..., K) mask over the family's knobs."""
        return effective[..., self.knob_index]

    def squash(self, hand: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return squash(hand, action, self.knob_index, self.bounds)

    @staticmethod
    def log_prob(mean: torch.Tensor, std: torch.Tensor, action: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """The Gaussian log-density of the action, summed over its dimensions (those of `mask`, if given)."""
        z = (action - mean) / std
        per_dim = -0.5 * z * z - torch.log(std) - 0.5 * math.log(2 * math.pi)
        return (per_dim if mask is None else per_dim * mask).sum(-1)


class PolicySchedule:
    """Adapts a SchedulePolicy to the sampler's Schedule protocol around a hand-schedule table.
    sample_actions=False acts with the mean action everywhere (evaluation)."""

    def __init__(self, policy: SchedulePolicy, hand_table: torch.Tensor, sample_actions: bool = True):
        self.policy = policy
        self.hand_table = hand_table
        self.sample_actions = sample_actions
        self.encoder = policy.encoder

    @torch.no_grad()
    def decide(self, step, steps, state, prompt_feat, explore, generator, effective):
        if steps != len(self.hand_table):
            raise ValueError(f"hand table has {len(self.hand_table)} steps, asked for {steps}")
        batch = state.shape[0]
        mean, std = self.policy(torch.full((batch,), step), steps, state, prompt_feat)
        mask = self.policy.learned(effective)
        if explore and self.sample_actions:  # the noise is drawn for every dimension, so the stream stays aligned
            action = torch.where(mask, mean + std * torch.randn(mean.shape, generator=generator), mean)
        else:
            action = mean
        hand = self.hand_table[step].expand(batch, -1)
        return Decision(knobs=self.policy.squash(hand, action), action=action,
                        logp=SchedulePolicy.log_prob(mean, std, action, mask), mask=mask)
