"""The flow-matching image family (TinyFlow, SD3, FLUX.1) behind the family seam: SDE/ODE sampling of continuous
latents under a step plan, theta's likelihood of the recorded SDE transitions or DiffusionNFT's likelihood-free
objective, the three schedule knobs, images for the rewards."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from cogrpo.models.checkpoint import build_model
from cogrpo.models.schedule_policy import unit_knobs_that_move
from cogrpo.models.tiny_flow import TinyFlow
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.family import ActionLogProbs
from cogrpo.proto.kinds import FLOW_IMAGE_KNOBS
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.shapes import summarize_images
from cogrpo.rollout.flow_image.nft import ForwardProcessNFT
from cogrpo.rollout.flow_image.sampler import FlowScheduleInputs, generate, replay_log_probs
from cogrpo.rollout.flow_image.solvers import time_grid
from cogrpo.rollout.steps import StepPlan

KNOB_NAMES = tuple(knob.name for knob in FLOW_IMAGE_KNOBS)
_NOISE_LEVEL = KNOB_NAMES.index("noise_level")


def hand_knobs(config: SamplerConfig, steps: int) -> torch.Tensor:
    """(steps, K): each step's share of the time left on the (shifted) uniform grid, so the hand schedule lands
    on exactly that grid (1 on the last step); the configured noise level and guidance throughout."""
    grid = time_grid(steps, config.time_shift)
    table = torch.empty(steps, len(KNOB_NAMES), dtype=torch.float64)
    table[:, KNOB_NAMES.index("step_fraction")] = 1 - grid[1:] / grid[:-1]
    table[:, _NOISE_LEVEL] = config.noise_level
    table[:, KNOB_NAMES.index("guidance")] = config.guidance
    return table.float()


def effective_knobs(hand: torch.Tensor, plan: StepPlan) -> torch.Tensor:
    """(len(plan), K) bool: the knobs that can change the outcome at each executed step. The last step's fraction
    is 1 (it lands on t = 0); the noise level acts on SDE steps only."""
    rows = []
    for step, stochastic in zip(plan.plan, plan.stochastic.tolist()):
        row = unit_knobs_that_move(hand[step], FLOW_IMAGE_KNOBS)
        row[_NOISE_LEVEL] = stochastic
        rows.append(row)
    return torch.stack(rows)


class SDEReplay:
    """theta's log-density of each trained step's recorded SDE transition (one action per step, A = 1), from the
    latent before it with the step's knobs: exactly the Gaussian the sampler drew from."""

    scores_steps = True

    def __init__(self, t_cap: Callable[[int], float]):
        self.t_cap = t_cap  # of a trajectory's schedule length

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        return [{}]

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        actions = traj.stochastic[torch.tensor(steps)][None, :, None].expand(traj.batch_size, -1, 1)
        if select is not None:
            actions = actions & select[..., None]
        return ActionLogProbs(replay_log_probs(model, traj, steps, self.t_cap(traj.schedule_steps), select), actions)

    def behaviour(self, traj: Trajectory, steps: list[int]) -> torch.Tensor:
        return traj.tensors["step_logp"][:, torch.tensor(steps), None]


class FlowImageFamily:
    samples = "images"
    knobs = FLOW_IMAGE_KNOBS

    def __init__(self, config: Config):
        self.config = config

    def t_cap(self, steps: int) -> float:
        """Where sigma's denominator is capped: the first time below 1 of the grid a run of `steps` steps decodes on
        (Flow-GRPO's choice)."""
        return float(time_grid(steps, self.config.sampler.time_shift)[1])

    def build_model(self) -> TinyFlow:
        return build_model(self.config.model)

    def schedule_encoder(self, model: TinyFlow, config: SchedulePolicyConfig) -> FlowScheduleInputs:
        return FlowScheduleInputs(model, config)

    def hand_schedule(self, steps: int) -> torch.Tensor:
        return hand_knobs(self.config.sampler, steps)

    def sample(self, model: TinyFlow, prompts: list[str], schedule, plan: StepPlan, seed: int) -> Trajectory:
        steps = plan.plan[-1] + 1
        hand = self.hand_schedule(steps)
        second_order = torch.zeros(len(plan.plan), dtype=torch.bool) if plan.second_order is None \
            else plan.second_order
        return generate(model, model.encode_prompts(prompts), schedule, hand, seed, plan.plan, plan.stochastic,
                        effective_knobs(hand, plan), second_order, self.t_cap(steps), plan.noise_group)

    def decode(self, model: TinyFlow, traj: Trajectory) -> np.ndarray:
        return model.decode_images(traj.tensors["latents"][:, -1])

    def estimator(self, name: str, algo: AlgoConfig) -> SDEReplay:
        if name == "trajectory":
            return SDEReplay(self.t_cap)
        raise InputError(f"the flow image family has no likelihood estimator {name!r} (trajectory)")

    def forward_objective(self, name: str, algo: AlgoConfig) -> ForwardProcessNFT:
        if name == "nft":
            return ForwardProcessNFT(algo)
        raise InputError(f"the flow image family has no likelihood-free objective {name!r} (nft)")

    def summarize(self, records: list[dict], samples: np.ndarray) -> tuple[dict, list[dict]]:
        return summarize_images(records, samples, self.config.prompt_world)
