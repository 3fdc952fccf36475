"""A test-only model family and its reward, plugged in by name ("tests.toy_family:GaussianBandit") to prove the
family seam: the learner, both runtimes, checkpoints and metrics train it without a line of their own changed.

theta is a Gaussian bandit: at each of `sampler.steps` steps it draws a `dims`-vector around its mean for that step;
the schedule policy sets each step's noise scale (knob `noise`, hand value 1). The reward is the negative squared
distance of the drawn vectors to `options.target`, so the optimum is known in closed form: theta's mean at the
target, and as little noise as the schedule dares.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cogrpo.proto.family import ActionLogProbs
from cogrpo.proto.kinds import Knob
from cogrpo.proto.messages import Trajectory

DIMS = 2


class BanditMeans(nn.Module):
    kind = "gaussian_bandit"

    def __init__(self, steps: int):
        super().__init__()
        self.means = nn.Parameter(torch.zeros(steps, DIMS))

    def forward(self, steps: torch.Tensor) -> torch.Tensor:
        """The mean action of each step index: (..., DIMS)."""
        return self.means[steps]


class Progress(nn.Module):
    """What the schedule policy reads: how far through the trajectory the step is; no prompt."""

    state_dim, prompt_dim = 1, 1


def gaussian_log_prob(actions: torch.Tensor, means: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    z = (actions - means) / scale[..., None]
    return (-0.5 * z * z - torch.log(scale)[..., None] - 0.5 * math.log(2 * math.pi)).sum(-1)


class Replay:
    """theta's log-prob of each recorded action under its current means, one action element per step."""

    scores_steps = True

    def inputs(self, traj, epochs):
        return [{}]

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        idx = torch.tensor(steps)
        means = model(traj.step_index[idx])
        logp = gaussian_log_prob(traj.tensors["actions"][:, idx], means, traj.knobs[:, idx, 0])[..., None]
        mask = torch.ones_like(logp, dtype=torch.bool) if select is None else select[..., None]
        return ActionLogProbs(logp, mask)

    def behaviour(self, traj, steps):
        return traj.tensors["logp"][:, torch.tensor(steps), None]


class GaussianBandit:
    samples = "vectors"
    knobs = (Knob("noise", "positive"),)

    def __init__(self, config):
        self.config = config

    def build_model(self) -> BanditMeans:
        return BanditMeans(self.config.sampler.steps)

    def schedule_encoder(self, model, config) -> Progress:
        return Progress()

    def hand_schedule(self, steps: int) -> torch.Tensor:
        return torch.ones(steps, 1)

    @torch.no_grad()
    def sample(self, model, prompts, schedule, plan, seed):
        batch, steps, executed = len(prompts), plan.plan[-1] + 1, len(plan.plan)
        generator = torch.Generator().manual_seed(seed)
        actions, logps, knobs, states, moves, logp_phi, masks = [], [], [], [], [], [], []
        for t, step in enumerate(plan.plan):
            state = torch.full((batch, 1), t / executed)
            decision = schedule.decide(step, steps, state, torch.zeros(batch, 1), bool(plan.stochastic[t]), generator,
                                       torch.ones(1, dtype=torch.bool))
            scale, mean = decision.knobs[:, 0], model(torch.tensor(step)).expand(batch, -1)
            noise = torch.randn(batch, DIMS, generator=generator) if plan.stochastic[t] else torch.zeros(batch, DIMS)
            action = mean + scale[:, None] * noise
            actions.append(action)
            logps.append(gaussian_log_prob(action, mean, scale) if plan.stochastic[t] else torch.zeros(batch))
            knobs.append(decision.knobs)
            states.append(state)
            moves.append(decision.action)
            logp_phi.append(decision.logp)
            masks.append(decision.mask)
        return Trajectory(tensors={"actions": torch.stack(actions, 1), "logp": torch.stack(logps, 1)},
                          knobs=torch.stack(knobs, 1), sched_state=torch.stack(states, 1),
                          prompt_feat=torch.zeros(batch, 1), sched_action=torch.stack(moves, 1),
                          sched_logp=torch.stack(logp_phi, 1), sched_mask=torch.stack(masks),
                          stochastic=plan.stochastic, step_index=torch.tensor(plan.plan), schedule_steps=steps,
                          seed=seed)

    def decode(self, model, traj) -> np.ndarray:
        return traj.tensors["actions"].reshape(traj.batch_size, -1).numpy()

    def estimator(self, name, algo) -> Replay:
        return Replay()

    def summarize(self, records, samples):
        target = np.asarray(self.config.model.options.get("target", 1.0))
        return {"distance": float(np.sqrt(((samples - target) ** 2).sum(-1)).mean())}, []


class Distance:
    """Reward: minus the squared distance of a sample's vectors to `options.target` (a number or a list)."""

    scores = "vectors"

    def __init__(self, config):
        self.target = np.asarray(config.options.get("target", 1.0), dtype=np.float64)

    def score(self, samples, prompts, metadata):
        return -((np.asarray(samples) - self.target) ** 2).sum(-1), np.ones(len(samples), dtype=bool)
