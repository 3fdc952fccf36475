"""The flow family's sampler and replay on a random-weight TinyFlow: reproducible rollouts, replayed log-probs equal
to the recorded ones, and step plans (window, random subset, Flash) that take and train exactly the steps they
claim."""

import pytest
import torch

from cogrpo.cluster.build import build_policies
from cogrpo.proto.config import resolve_config
from cogrpo.rollout.flow_image.family import hand_knobs
from cogrpo.rollout.flow_image.solvers import time_grid
from cogrpo.rollout.schedule import HandSchedule, schedule_for
from cogrpo.rollout.steps import full_plan, rollout_plan, step_plan

PROMPTS = ["a red square", "two blue circles", "a green triangle", "a photo of a yellow circle"]


def flow_config(*overrides: str):
    tree = {"model": {"kind": "tiny_flow", "checkpoint": None, "arch": {"d_model": 32, "layers": 1, "heads": 2}},
            "sampler": {"steps": 6, "time_shift": 3.0}}
    return resolve_config(tree, list(overrides))


@pytest.fixture(scope="module")
def flow():
    """A random TinyFlow whose head is not zero (the shipped init predicts v = 0 everywhere)."""
    policies = build_policies(flow_config())
    torch.nn.init.normal_(policies.model.head.weight, std=0.05)
    return policies


def rollout(flow, plan, seed=0, explore=True):
    config = flow.family.config
    schedule = schedule_for(config, flow.family, flow.policy, config.sampler.steps, explore)
    return flow.family.sample(flow.model, PROMPTS, schedule, plan, seed)


def test_a_fixed_seed_rollout_is_reproducible_and_another_seed_differs(flow):
    plan = full_plan(6)
    a, b, c = rollout(flow, plan, 3), rollout(flow, plan, 3), rollout(flow, plan, 4)
    assert torch.equal(a.tensors["latents"], b.tensors["latents"]) and torch.equal(a.knobs, b.knobs)
    assert not torch.equal(a.tensors["latents"], c.tensors["latents"])


def test_the_hand_schedule_lands_on_the_shifted_grid(flow):
    traj = flow.family.sample(flow.model, PROMPTS, HandSchedule(hand_knobs(flow.family.config.sampler, 6)),
                              full_plan(6), 0)
    grid = time_grid(6, 3.0).float()
    assert torch.allclose(traj.tensors["times"], grid.expand(len(PROMPTS), -1), atol=1e-6)
    assert (traj.tensors["times"][:, -1] == 0).all()


def test_replayed_log_probs_equal_the_recorded_ones_on_every_sde_step(flow):
    traj = rollout(flow, full_plan(6))
    estimator = flow.family.estimator("trajectory", flow.family.config.algo)
    steps = list(range(6))
    scored = estimator.log_probs(flow.model, traj, steps, {})
    assert scored.logp.shape == (len(PROMPTS), 6, 1) and scored.mask.all()
    assert torch.allclose(scored.logp, estimator.behaviour(traj, steps), atol=1e-4)
    half = torch.tensor([[True, False] * 3] * len(PROMPTS))
    selected = estimator.log_probs(flow.model, traj, steps, {}, half)
    assert torch.equal(selected.mask[..., 0], half)
    assert torch.allclose(selected.logp[half], scored.logp[half], atol=1e-5) and (selected.logp[~half] == 0).all()


def test_the_window_samples_and_trains_its_steps_and_integrates_the_ode_outside():
    config = flow_config("algo.steps.mode=window", "algo.steps.window=2", "algo.steps.shift_every=1",
                         "algo.steps.stride=2")
    flow = build_policies(config)
    plan = step_plan(config.algo.steps, 6, 1, 0)  # window at steps 2-3
    traj = rollout(flow, plan)
    assert plan.trained == [2, 3] and plan.stochastic.tolist() == [False, False, True, True, False, False]
    assert (traj.tensors["step_logp"][:, [0, 1, 4, 5]] == 0).all() and (traj.tensors["step_logp"][:, 2:4] != 0).all()
    assert not traj.sched_mask[[0, 1, 4, 5], 1].any()  # the noise level does nothing on ODE steps
    estimator = flow.family.estimator("trajectory", config.algo)
    assert not estimator.log_probs(flow.model, traj, [0, 1], {}).mask.any()


def test_flash_takes_fewer_steps_after_the_window_with_the_second_order_solver():
    config = flow_config("algo.steps.mode=window", "algo.steps.window=2", "algo.steps.flash_ratio=0.5",
                         "algo.mode=grpo")
    flow = build_policies(config)
    plan = step_plan(config.algo.steps, 6, 0, 0)
    assert plan.plan == [0, 1, 2, 5] and plan.second_order.tolist() == [False, False, True, True]
    traj = rollout(flow, plan)
    grid = time_grid(6, 3.0).float()
    assert torch.allclose(traj.tensors["times"][0], grid[[0, 1, 2, 5, 6]], atol=1e-6)  # step 2 jumps 3 and 4
    assert torch.isfinite(traj.tensors["latents"]).all()


def test_dance_grpo_subsets_per_sample_are_what_the_estimator_scores():
    config = flow_config("algo.steps.mode=random", "algo.steps.fraction=0.5", "algo.steps.random_per=sample")
    flow = build_policies(config)
    plan = step_plan(config.algo.steps, 6, 0, 0)
    trained = plan.trained_mask(len(PROMPTS))
    assert (trained.sum(1) == 3).all() and len({tuple(row.tolist()) for row in trained}) > 1
    traj = rollout(flow, plan)
    scored = flow.family.estimator("trajectory", config.algo).log_probs(flow.model, traj, plan.trained, {}, trained)
    assert torch.equal(scored.mask[..., 0], trained)


def test_shared_noise_starts_each_group_from_one_draw_and_the_sde_steps_part_them(flow):
    config = flow_config("sampler.shared_noise=true", "algo.group_size=2", "sampler.batch_size=4")
    plan = rollout_plan(config, 0)
    assert plan.noise_group == 2 and rollout_plan(flow_config(), 0).noise_group == 1
    start = rollout(flow, plan).tensors["latents"]
    assert torch.equal(start[0, 0], start[1, 0]) and torch.equal(start[2, 0], start[3, 0])
    assert not torch.equal(start[0, 0], start[2, 0]) and not torch.equal(start[0, -1], start[1, -1])
