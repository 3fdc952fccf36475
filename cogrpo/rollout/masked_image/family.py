"""The masked image family (TinyMDM, aMUSEd, Meissonic) behind the family seam: MaskGIT / emerge sampling of token
grids, theta's estimators over committed tokens, the four schedule knobs, images for the rewards."""

from __future__ import annotations

import math

import numpy as np
import torch

from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.schedule_policy import unit_knobs_that_move
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.kinds import MASKED_IMAGE_KNOBS
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.shapes import summarize_images
from cogrpo.rollout.masked.estimators import MaskGRPO, TrajectoryReplay
from cogrpo.rollout.masked.sampler import ScheduleInputs, generate
from cogrpo.rollout.steps import StepPlan

KNOB_NAMES = tuple(knob.name for knob in MASKED_IMAGE_KNOBS)
_REMASK_TEMPERATURE = KNOB_NAMES.index("remask_temperature")


def hand_knobs(config: SamplerConfig, steps: int) -> torch.Tensor:
    """(steps, K): the cosine mask schedule, constant temperature and guidance, and a re-mask temperature decaying
    linearly from its initial value (kept positive, so residual squashing is exact)."""
    t = torch.arange(steps, dtype=torch.float64)
    table = torch.empty(steps, len(KNOB_NAMES), dtype=torch.float64)
    table[:, KNOB_NAMES.index("remask_ratio")] = torch.cos(math.pi / 2 * (t + 1) / steps)
    table[-1, KNOB_NAMES.index("remask_ratio")] = 0.0  # exactly: the last step commits everything
    table[:, KNOB_NAMES.index("temperature")] = config.temperature
    table[:, _REMASK_TEMPERATURE] = config.remask_temperature * (1 - t / steps)
    table[:, KNOB_NAMES.index("guidance")] = config.guidance
    return table.float()


def effective_knobs(hand: torch.Tensor, plan: list[int], sampler: str) -> torch.Tensor:
    """(len(plan), K) bool: the knobs that can change the outcome at each executed step. A re-mask ratio the hand
    schedule pins at 0 or 1 is not moved; the re-mask temperature only ranks the tokens MaskGIT keeps masked, so it
    does nothing on the last step (everything is committed) nor ever under the emerge sampler (which commits each
    token by a coin)."""
    rows = []
    for t, step in enumerate(plan):
        row = unit_knobs_that_move(hand[step], MASKED_IMAGE_KNOBS)
        if sampler == "emerge" or t == len(plan) - 1:
            row[_REMASK_TEMPERATURE] = False
        rows.append(row)
    return torch.stack(rows)


class MaskedImageFamily:
    samples = "images"
    knobs = MASKED_IMAGE_KNOBS

    def __init__(self, config: Config):
        self.config = config

    def build_model(self) -> MaskedTokenModel:
        return build_model(self.config.model)

    def schedule_encoder(self, model: MaskedTokenModel, config: SchedulePolicyConfig) -> ScheduleInputs:
        return ScheduleInputs(model, config)

    def hand_schedule(self, steps: int) -> torch.Tensor:
        return hand_knobs(self.config.sampler, steps)

    def sample(self, model: MaskedTokenModel, prompts: list[str], schedule, plan: StepPlan, seed: int) -> Trajectory:
        steps = plan.plan[-1] + 1
        effective = effective_knobs(self.hand_schedule(steps), plan.plan, self.config.sampler.kind)
        return generate(model, model.encode_prompts(prompts), schedule, steps, seed, self.config.sampler.kind,
                        stochastic=plan.stochastic, plan=plan.plan, effective=effective)

    def decode(self, model: MaskedTokenModel, traj: Trajectory) -> np.ndarray:
        return model.decode_images(traj.tensors["tokens"])

    def estimator(self, name: str, algo: AlgoConfig):
        if name == "trajectory":
            return TrajectoryReplay()
        if name == "maskgrpo":
            return MaskGRPO(algo)
        raise InputError(f"the masked image family has no likelihood estimator {name!r} (trajectory, maskgrpo)")

    def forward_objective(self, name: str, algo: AlgoConfig):
        raise InputError(f"the masked image family has no likelihood-free objective {name!r}")

    def summarize(self, records: list[dict], samples: np.ndarray) -> tuple[dict, list[dict]]:
        return summarize_images(records, samples, self.config.prompt_world)
