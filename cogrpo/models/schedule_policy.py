"""pi_phi, the schedule policy: per decoding step, a diagonal Gaussian over unconstrained actions a, one per
learned knob, squashed around the hand schedule h:

  remask_ratio = sigmoid(logit(h) + a)          temperature, remask_temperature, guidance = softplus(softplus^-1(h) + a)

It reads the step position (sinusoidal features of t / T), the fraction still masked and the pooled prompt
embedding. The output layer starts at zero, so a fresh policy's mean action is 0 and it reproduces the hand
schedule exactly; the likelihood used for GRPO ratios is that of a (the squashing's Jacobian does not depend on
phi, so it cancels in every ratio).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.messages import KNOBS, Decision

_EPS = 1e-4
_RATIO = KNOBS.index("remask_ratio")


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def squash(hand: torch.Tensor, action: torch.Tensor, knob_index: list[int]) -> torch.Tensor:
    """Knob values (..., len(KNOBS)) from the hand values and actions (..., len(knob_index))."""
    knobs = hand.clone()
    for j, k in enumerate(knob_index):
        if k == _RATIO:  # a ratio of exactly 0 or 1 (the last step commits everything) is not the policy's to move
            h = hand[..., k]
            moved = torch.sigmoid(torch.logit(h.clamp(_EPS, 1 - _EPS)) + action[..., j])
            knobs[..., k] = torch.where((h > 0) & (h < 1), moved, h)
        else:
            h = hand[..., k].clamp(min=_EPS)
            knobs[..., k] = F.softplus(_inverse_softplus(h) + action[..., j])
    return knobs


def squash_log_det(hand: torch.Tensor, action: torch.Tensor, knob_index: list[int]) -> torch.Tensor:
    """log |d knobs / d action| summed over learned knobs: turns log p(a) into the density of the knob values."""
    total = torch.zeros(action.shape[:-1])
    for j, k in enumerate(knob_index):
        if k == _RATIO:
            h = hand[..., k]
            z = torch.logit(h.clamp(_EPS, 1 - _EPS)) + action[..., j]
            total = total + torch.where((h > 0) & (h < 1), F.logsigmoid(z) + F.logsigmoid(-z), 0.0)
        else:
            z = _inverse_softplus(hand[..., k].clamp(min=_EPS)) + action[..., j]
            total = total + F.logsigmoid(z)
    return total


class SchedulePolicy(nn.Module):
    def __init__(self, config: SchedulePolicyConfig, prompt_dim: int):
        super().__init__()
        self.config = config
        self.knob_index = [KNOBS.index(k) for k in config.learn]
        n_in = config.time_features + 1 + prompt_dim
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

    def forward(self, step: torch.Tensor, steps: int, masked_fraction: torch.Tensor,
                prompt_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the action; step and masked_fraction share any leading shape with prompt_feat's."""
        x = torch.cat([self.time_features(step, steps), masked_fraction[..., None], prompt_feat], -1)
        return self.net(x), self.log_std.exp().expand(*x.shape[:-1], -1)

    @staticmethod
    def log_prob(mean: torch.Tensor, std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        z = (action - mean) / std
        return (-0.5 * z * z - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


class PolicySchedule:
    """Adapts a SchedulePolicy to the sampler's Schedule protocol around a hand-schedule table.
    sample_actions=False acts with the mean action everywhere (evaluation)."""

    def __init__(self, policy: SchedulePolicy, hand_table: torch.Tensor, sample_actions: bool = True):
        self.policy = policy
        self.hand_table = hand_table
        self.sample_actions = sample_actions

    @torch.no_grad()
    def decide(self, step, steps, masked_fraction, prompt_feat, explore, generator):
        if steps != len(self.hand_table):
            raise ValueError(f"hand table has {len(self.hand_table)} steps, asked for {steps}")
        batch = masked_fraction.shape[0]
        mean, std = self.policy(torch.full((batch,), step), steps, masked_fraction, prompt_feat)
        explore = explore and self.sample_actions
        action = mean + std * torch.randn(mean.shape, generator=generator) if explore else mean
        hand = self.hand_table[step].expand(batch, -1)
        return Decision(knobs=squash(hand, action, self.policy.knob_index), action=action,
                        logp=SchedulePolicy.log_prob(mean, std, action))
