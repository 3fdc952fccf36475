"""The masked text family (TinyMDLM) behind the family seam: LLaDA's semi-autoregressive block sampler with
low-confidence or random re-masking, the four likelihood estimators side by side, three schedule knobs (no
guidance), texts for the rewards."""

from __future__ import annotations

import torch

from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.schedule_policy import unit_knobs_that_move
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig
from cogrpo.proto.errors import InputError
from cogrpo.proto.kinds import MASKED_TEXT_KNOBS
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.reasoning import summarize_texts
from cogrpo.rollout.masked.estimators import D1, MaskGRPO, TrajectoryReplay, UniGRPO
from cogrpo.rollout.masked.sampler import ScheduleInputs, block_ends, blocks_of, generate
from cogrpo.rollout.steps import StepPlan

KNOB_NAMES = tuple(knob.name for knob in MASKED_TEXT_KNOBS)
_RATIO, _REMASK_TEMPERATURE = KNOB_NAMES.index("remask_ratio"), KNOB_NAMES.index("remask_temperature")


def hand_knobs(config: SamplerConfig, steps: int, blocks: int) -> torch.Tensor:
    """(steps, K): within each block, LLaDA's even share of its positions committed per step (the share left masked
    falls linearly to exactly 0 at the block's last step); constant temperature; a re-mask temperature decaying
    linearly within the block."""
    per_block = steps // blocks
    k = torch.arange(steps, dtype=torch.float64) % per_block
    table = torch.empty(steps, len(KNOB_NAMES), dtype=torch.float64)
    table[:, _RATIO] = 1 - (k + 1) / per_block
    table[:, KNOB_NAMES.index("temperature")] = config.temperature
    table[:, _REMASK_TEMPERATURE] = config.remask_temperature * (1 - k / per_block)
    return table.float()


class MaskedTextFamily:
    samples = "texts"
    knobs = MASKED_TEXT_KNOBS

    def __init__(self, config: Config):
        self.config = config
        self.length = config.sampler.length
        self.blocks = self.length // config.sampler.block_length  # the config checked that it divides

    def build_model(self) -> MaskedTokenModel:
        model = build_model(self.config.model, self.length)
        if model.num_tokens != self.length:
            raise InputError(f"sampler.length {self.length}: the model decodes completions of {model.num_tokens}")
        return model

    def schedule_encoder(self, model: MaskedTokenModel, config: SchedulePolicyConfig) -> ScheduleInputs:
        return ScheduleInputs(model, config)

    def hand_schedule(self, steps: int) -> torch.Tensor:
        if steps % self.blocks:
            raise InputError(f"{steps} decoding steps cannot be split evenly between {self.blocks} blocks")
        return hand_knobs(self.config.sampler, steps, self.blocks)

    def effective_knobs(self, hand: torch.Tensor, plan: StepPlan, per_block: int) -> torch.Tensor:
        """(len(plan), K) bool: a block's last step commits the rest of it, so its ratio and re-mask temperature do
        nothing there; random re-masking ranks no confidence."""
        rows = []
        for step, ends in zip(plan.plan, block_ends(plan.plan, per_block)):
            row = unit_knobs_that_move(hand[step], MASKED_TEXT_KNOBS)
            if ends or self.config.sampler.kind == "random":
                row[_REMASK_TEMPERATURE] = False
            if ends:
                row[_RATIO] = False
            rows.append(row)
        return torch.stack(rows)

    def sample(self, model: MaskedTokenModel, prompts: list[str], schedule, plan: StepPlan, seed: int) -> Trajectory:
        steps = plan.plan[-1] + 1
        size, per_block = blocks_of(model.num_tokens, steps, self.config.sampler.block_length)
        effective = self.effective_knobs(self.hand_schedule(steps), plan, per_block)
        return generate(model, model.encode_prompts(prompts), schedule, steps, seed, self.config.sampler.kind,
                        stochastic=plan.stochastic, plan=plan.plan, effective=effective, block_length=size)

    def decode(self, model: MaskedTokenModel, traj: Trajectory) -> list[str]:
        return model.decode_texts(traj.tensors["tokens"])

    def estimator(self, name: str, algo: AlgoConfig):
        estimators = {"trajectory": TrajectoryReplay, "maskgrpo": lambda: MaskGRPO(algo, fading=True),
                      "d1": D1, "unigrpo": UniGRPO}
        if name not in estimators:
            raise InputError(f"the masked text family has no likelihood estimator {name!r} ({', '.join(estimators)})")
        return estimators[name]()

    def forward_objective(self, name: str, algo: AlgoConfig):
        raise InputError(f"the masked text family has no likelihood-free objective {name!r}")

    summarize = staticmethod(summarize_texts)
