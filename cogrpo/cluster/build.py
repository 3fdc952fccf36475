"""The one builder of what every process holds: the model family, theta (the backbone), phi (the schedule policy),
the rewards, and the learner. The single-process runtime, the Ray actors, the CLI and the benchmarks build through
here, so all of them start from the same weights and the same initialisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from cogrpo.learner.learner import Learner, Loss
from cogrpo.learner.ranks import ONE_PROCESS, Ranks
from cogrpo.models.activations import enable_activation_checkpointing
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.family import Family
from cogrpo.proto.plugins import load_plugin
from cogrpo.rewards.interface import Reward
from cogrpo.rewards.registry import build_reward
from cogrpo.rewards.simulated import SimulatedReward
from cogrpo.rollout.flow_image.family import FlowImageFamily
from cogrpo.rollout.masked_image.family import MaskedImageFamily
from cogrpo.rollout.masked_text.family import MaskedTextFamily
from cogrpo.rollout.simulated import SimulatedFamily

BUILTIN_FAMILIES = {"masked_image": MaskedImageFamily, "flow_image": FlowImageFamily, "masked_text": MaskedTextFamily}


def family_of(config: Config) -> Family:
    """The configured family: a built-in one, or the class a "package.module:Class" reference names; in a simulated
    run (`simulate:`), the simulated family standing in for it."""
    name = config.model.family
    family = (BUILTIN_FAMILIES.get(name) or load_plugin(name))(config)
    return family if config.simulate is None else SimulatedFamily(config, family)


@dataclass
class Policies:
    """The joint policy: the family that samples with it, theta and phi."""

    family: Family
    model: torch.nn.Module
    policy: SchedulePolicy


def build_policies(config: Config, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Policies:
    """theta from the configured weights (moved to `device`, cast to `dtype`) and a fresh phi reading what the
    family's encoder takes from theta as built. The torch seed is set first, so phi starts from the same weights
    in every process."""
    torch.manual_seed(config.seed)
    family = family_of(config)
    model = family.build_model()
    encoder = family.schedule_encoder(model, config.schedule_policy)
    if device is not None or dtype is not None:
        model = model.to(device, dtype)
    return Policies(family, model, SchedulePolicy(config.schedule_policy, family.knobs, encoder))


def build_rewards(config: Config) -> list[tuple[Reward, float]]:
    """The configured reward terms; in a simulated run, simulated ones in their place (names and weights kept)."""
    if config.simulate is not None:
        return [(SimulatedReward(config.simulate, r.name), r.weight) for r in config.rewards]
    return [(build_reward(r), r.weight) for r in config.rewards]


def build_learner(config: Config, policies: Policies, model: torch.nn.Module | None = None,
                  theta_step: Callable[[Loss], float] | None = None,
                  phi_step: Callable[[torch.Tensor], float] | None = None,
                  reference: torch.nn.Module | None = None, ranks: Ranks = ONE_PROCESS) -> Learner:
    """model: what the learner trains and calls, when it is not the plain module (a DeepSpeed engine); ranks: the
    learner's place among data-parallel ranks."""
    if config.algo.activation_checkpointing and config.simulate is None:  # simulated: in the learner's seconds
        enable_activation_checkpointing(policies.model)
    return Learner(policies.model if model is None else model, policies.policy, config, policies.family,
                   theta_step=theta_step, phi_step=phi_step, reference=reference, ranks=ranks)
