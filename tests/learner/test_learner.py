"""The learner's update on stale samples (drawn by older weights than the learner's): the behaviour -> old
importance weight must enter theta's loss. At theta_old every ratio is 1, so the first minibatch's loss is
-mean(A * min(w, is_cap)) in closed form, and an update that drops the correction gives -mean(A) instead."""

import copy

import pytest
import torch

from cogrpo.learner.learner import Learner, ScoredBatch
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig, TinyArch
from cogrpo.proto.kinds import MASKED_IMAGE_KNOBS
from cogrpo.rollout.masked.estimators import TrajectoryReplay
from cogrpo.rollout.masked.sampler import ScheduleInputs
from cogrpo.rollout.masked_image.family import MaskedImageFamily, hand_knobs
from cogrpo.rollout.steps import full_plan

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a circle and a triangle",
           "a photo of a green square above a blue triangle"]
ADV = torch.tensor([1.0, -0.5, 0.25, -2.0])
STEPS = 4


@pytest.fixture(scope="module")
def stale():
    """A trajectory sampled by a tiny model, and the learner's newer weights (the head's bias moved)."""
    torch.manual_seed(0)
    sampler = TinyMDM(TinyArch(d_model=32, layers=1, heads=2, conv_layers=1))
    config = SchedulePolicyConfig()
    policy = SchedulePolicy(config, MASKED_IMAGE_KNOBS, ScheduleInputs(sampler, config))
    schedule = PolicySchedule(policy, hand_knobs(SamplerConfig(), STEPS))
    traj = MaskedImageFamily(Config()).sample(sampler, PROMPTS, schedule, full_plan(STEPS), seed=3)
    newer = copy.deepcopy(sampler)
    with torch.no_grad():
        newer.head.bias.add_(torch.linspace(-1.5, 1.5, newer.head.bias.numel()))
    return newer, policy, traj


def update_loss(stale, algo: AlgoConfig) -> float:
    """theta's loss as the learner reports it for one update of the newer weights on the stale samples."""
    newer, policy, traj = stale
    config = Config(algo=algo)
    learner = Learner(copy.deepcopy(newer), policy, config, MaskedImageFamily(config))
    trained = torch.ones(len(PROMPTS), STEPS, dtype=torch.bool)
    batch = ScoredBatch(traj, ADV, torch.ones(len(PROMPTS), dtype=torch.bool), trained)
    return learner.update(batch, 0, stale=True)["loss_theta"]


def replayed_under_newer(stale):
    """The sampler's own actions replayed under the newer weights: (log-probs, mask, recorded log-probs)."""
    newer, _, traj = stale
    estimator, steps = TrajectoryReplay(), list(range(STEPS))
    with torch.no_grad():
        scored = estimator.log_probs(newer, traj, steps, {})
    return scored.logp, scored.mask, estimator.behaviour(traj, steps)


def test_a_stale_samples_tokens_are_weighted_by_their_truncated_behaviour_to_old_ratio(stale):
    """Trajectory replay, token_mean over each step: w = min(pi_old / pi_behaviour, is_cap) per committed token."""
    old, mask, behaviour = replayed_under_newer(stale)
    weight = torch.exp(old - behaviour).clamp(max=2.0) * mask
    per_step = (ADV[:, None, None] * weight).sum(-1) / mask.sum(-1).clamp(min=1)
    expected = -per_step[mask.any(-1)].mean().item()
    uncorrected = -(ADV[:, None] * mask.any(-1)).sum() / mask.any(-1).sum()
    assert abs(expected - uncorrected.item()) > 0.05  # the correction is large enough to tell apart
    assert update_loss(stale, AlgoConfig(mode="grpo", is_cap=2.0)) == pytest.approx(expected, abs=1e-5)


def test_a_stale_sample_under_maskgrpo_is_weighted_by_its_geometric_mean_ratio(stale):
    """MaskGRPO has no per-action behaviour log-probs: each sample's weight is min(exp(mean log-ratio of the
    sampler's actions), is_cap), one per sample on its one re-masked step. A learning rate of 1e-12 keeps theta at
    theta_old through both inner epochs, so each epoch's loss is the closed form."""
    old, mask, behaviour = replayed_under_newer(stale)
    log_weight = ((old - behaviour) * mask).sum((1, 2)) / mask.sum((1, 2))
    expected = -(ADV * torch.exp(log_weight).clamp(max=2.0)).mean().item()
    assert abs(expected + ADV.mean().item()) > 0.05  # -mean(A): the loss with no correction
    algo = AlgoConfig(mode="grpo", theta_likelihood="maskgrpo", inner_epochs=2, lr=1e-12, is_cap=2.0)
    assert update_loss(stale, algo) == pytest.approx(expected, abs=1e-5)
