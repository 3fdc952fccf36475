"""The simulated family (`simulate:` in the config): a stand-in for the configured family whose forward and backward
passes are waits that use no CPU, sized by the cost model, so that the runtime itself (Ray, the loop, the data flow,
the weight channel, the learner's math, metrics) runs as it would around the real model: a cluster of many GPUs is
planned on a few cores (docs/simulation.md). It keeps the configured family's knobs, hand schedule and what its
samples are, so phi, the step plans and the rewards see what they would; it imports no model library.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from cogrpo.models.schedule_policy import unit_knobs_that_move
from cogrpo.proto.config import Config, SimulateConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.family import ActionLogProbs, Family
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.schedule import DecisionLog

VOCABULARY = 8192  # token ids of the stand-in trajectories (Meissonic's VQ codebook)
PREVIEW = 16  # pixels per side of a stand-in image: the rewards hash it, so its bytes are not simulated


def wait(seconds: float) -> None:
    """A pass of the model on a GPU, as the host sees it: time passes, the CPU is free."""
    if seconds > 0:
        time.sleep(seconds)


class SimulatedModel(nn.Module):
    """theta: a model-sized buffer (published with every weight version, so the channel moves real bytes) and one
    trained number, a shift of every log-prob, through which the learner's real objective and optimiser run."""

    kind = "simulated"

    def __init__(self, weights_mb: float):
        super().__init__()
        self.register_buffer("weights", torch.zeros(max(1, round(weights_mb * 2**20 / 4)), dtype=torch.float32))
        self.shift = nn.Parameter(torch.zeros(1))

    def forward(self, logp: torch.Tensor) -> torch.Tensor:
        return logp + self.shift


class Progress(nn.Module):
    """What phi reads: how far through the decoding a step is; nothing of the prompt."""

    state_dim, prompt_dim = 1, 1


class _BackwardWait(torch.autograd.Function):
    """The identity, whose backward waits: the backward pass lands inside the learner's optimiser step."""

    @staticmethod
    def forward(ctx, logp: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        return logp.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        wait(ctx.seconds)
        return grad, None


class SimulatedReplay:
    """theta's log-probs of the recorded actions: the behaviour ones shifted by theta's number. A replay with
    gradients waits `learner_s_per_sample_step` per trained (sample, step), a third in forward and two in backward;
    one without (old, reference or stale-weight log-probs) waits the forward's third."""

    scores_steps = True

    def __init__(self, cost: SimulateConfig):
        self.cost = cost

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        return [{}]

    def log_probs(self, model: nn.Module, traj: Trajectory, steps: list[int], inputs: dict[str, torch.Tensor],
                  select: torch.Tensor | None = None) -> ActionLogProbs:
        pairs = traj.batch_size * len(steps) if select is None else int(select.sum())
        seconds = pairs * self.cost.learner_s_per_sample_step / self.cost.gpus_per_learner_rank
        wait(seconds / 3)
        logp = model(self.behaviour(traj, steps))
        if torch.is_grad_enabled():
            logp = _BackwardWait.apply(logp, 2 * seconds / 3)
        mask = torch.ones_like(logp, dtype=torch.bool) if select is None else \
            select[..., None].expand(logp.shape).clone()
        return ActionLogProbs(logp, mask)

    def behaviour(self, traj: Trajectory, steps: list[int]) -> torch.Tensor:
        return traj.tensors["logp"][:, torch.tensor(steps, dtype=torch.long)]


class SimulatedFamily:
    """The configured family (`stand_in`, whose model is never built) with the cost model's waits for passes."""

    def __init__(self, config: Config, stand_in: Family):
        self.cost, self.stand_in = config.simulate, stand_in
        self.samples, self.knobs = stand_in.samples, stand_in.knobs

    def build_model(self) -> SimulatedModel:
        return SimulatedModel(self.cost.weights_mb)

    def schedule_encoder(self, model: nn.Module, config) -> Progress:
        return Progress()

    def hand_schedule(self, steps: int) -> torch.Tensor:
        return self.stand_in.hand_schedule(steps)

    @torch.no_grad()
    def sample(self, model: nn.Module, prompts: list[str], schedule, plan, seed: int) -> Trajectory:
        """phi decides every executed step for real; the model's passes are one wait. A worker standing for k GPUs
        takes its batches one after another, so its own work on a batch (e seconds) is charged as k hosts would
        run it, side by side: the batch takes (passes + e) / k in all. The trajectory has the real one's size:
        `tokens` token ids, and the behaviour log-probs of the tokens each step commits."""
        start, gpus = time.perf_counter(), self.cost.gpus_per_rollout_worker
        batch, steps, executed = len(prompts), plan.plan[-1] + 1, len(plan.plan)
        generator = torch.Generator().manual_seed(seed)
        hand, log = self.hand_schedule(steps), DecisionLog(torch.zeros(batch, 1))
        for t, step in enumerate(plan.plan):
            state = torch.full((batch, 1), t / executed)
            log.record(state, schedule.decide(step, steps, state, log.prompt_feat, bool(plan.stochastic[t]),
                                              generator, unit_knobs_that_move(hand[step], self.knobs)))
        per_step = -(-self.cost.tokens // executed)
        draws = torch.rand(batch, executed, per_step, generator=generator).clamp_min(1e-6)
        logp = draws.log() * plan.stochastic[None, :, None]  # deterministic steps have no log-prob
        tokens = torch.randint(VOCABULARY, (batch, self.cost.tokens), generator=generator)
        own = time.perf_counter() - start
        wait((batch * executed * self.cost.rollout_s_per_image_step + own) / gpus - own)
        return log.trajectory({"tokens": tokens, "logp": logp}, plan.stochastic, plan.plan, steps, seed)

    def decode(self, model: nn.Module, traj: Trajectory) -> np.ndarray | list[str]:
        """Stand-in samples, distinct per sample and fixed by the batch's seed (the simulated rewards hash them)."""
        generator = torch.Generator().manual_seed(traj.seed)
        pixels = torch.randint(256, (traj.batch_size, PREVIEW, PREVIEW, 3), generator=generator, dtype=torch.uint8)
        if self.samples == "images":
            return pixels.numpy()
        return [bytes(row).hex() for row in pixels.reshape(traj.batch_size, -1)[:, :16].numpy()]

    def estimator(self, name: str, algo) -> SimulatedReplay:
        """Every estimator name costs what a trajectory replay does."""
        return SimulatedReplay(self.cost)

    def forward_objective(self, name: str, algo):
        raise InputError(f"a simulated run has no likelihood-free objective {name!r}")

    def summarize(self, records: list[dict], samples) -> tuple[dict, list[dict]]:
        return {}, []
