"""DiffusionNFT on a random-weight TinyFlow: its noisings are drawn once per epoch at the times the decoding
visited, and at the old policy its gradient is the flow-matching gradient scaled by 2r - 1 = clip(A / c, -1, 1):
a better-than-group image is learned, a worse one unlearned, an average one ignored."""

import copy

import pytest
import torch

from cogrpo.cluster.build import build_policies
from cogrpo.proto.config import resolve_config
from cogrpo.rollout.schedule import schedule_for
from cogrpo.rollout.steps import step_plan

PROMPTS = ["a red square", "two blue circles"]


@pytest.fixture(scope="module")
def nft():
    tree = {"model": {"kind": "tiny_flow", "checkpoint": None, "arch": {"d_model": 32, "layers": 1, "heads": 2}},
            "sampler": {"steps": 4}, "algo": {"mode": "grpo", "theta_objective": "nft", "steps": {"mode": "none"}}}
    config = resolve_config(tree)
    policies = build_policies(config)
    torch.nn.init.normal_(policies.model.head.weight, std=0.05)
    plan = step_plan(config.algo.steps, 4, 0, 0)
    schedule = schedule_for(config, policies.family, policies.policy, 4, False)
    traj = policies.family.sample(policies.model, PROMPTS, schedule, plan, 0)
    return policies, traj, policies.family.forward_objective("nft", config.algo)


def test_all_ode_rollouts_record_no_sde_step(nft):
    _, traj, _ = nft
    assert not traj.stochastic.any() and (traj.tensors["step_logp"] == 0).all()


def test_noisings_are_the_visited_times_drawn_once_per_epoch(nft):
    _, traj, objective = nft
    a, b = objective.inputs(traj, 2), objective.inputs(traj, 2)
    assert torch.equal(a[0]["t"], traj.tensors["times"][:, :-1]) and (a[0]["t"] > 0).all()
    assert a[0]["noise"].shape == (2, 4, *traj.tensors["latents"].shape[2:])
    assert torch.equal(a[1]["noise"], b[1]["noise"]) and not torch.equal(a[0]["noise"], a[1]["noise"])


def gradient(policies, traj, objective, advantage: float) -> torch.Tensor:
    model = policies.model
    view = objective.inputs(traj, 1)[0]
    one = torch.tensor([0])
    mb, mb_view = traj.select(one), {k: v[one] for k, v in view.items()}
    with torch.no_grad():
        old = objective.prediction(model, mb, mb_view)
    model.zero_grad()
    loss, _ = objective.loss(model, mb, mb_view, old, torch.tensor([advantage]), None)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_at_the_old_policy_the_gradient_is_flow_matchings_scaled_by_the_clipped_advantage(nft):
    learn = gradient(*nft, advantage=10.0)  # clip(10 / 5) = 1: plain (weighted) flow matching
    assert learn.norm() > 0
    assert torch.allclose(gradient(*nft, advantage=2.5), 0.5 * learn, atol=1e-7)
    assert torch.allclose(gradient(*nft, advantage=-10.0), -learn, atol=1e-7)
    assert gradient(*nft, advantage=0.0).abs().max() == 0


def test_a_positive_sample_is_learned(nft):
    """Steps on a better-than-group image bring theta's velocity closer to its flow-matching target."""
    policies, traj, objective = nft
    model = copy.deepcopy(policies.model)
    view = objective.inputs(traj, 1)[0]
    _, _, _, target = objective.noised(traj, view)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with torch.no_grad():
        before = (objective.prediction(model, traj, view).flatten(0, 1) - target).pow(2).mean()
    for _ in range(5):
        with torch.no_grad():
            old = objective.prediction(model, traj, view)
        loss, _ = objective.loss(model, traj, view, old, torch.tensor([5.0, 5.0]), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = (objective.prediction(model, traj, view).flatten(0, 1) - target).pow(2).mean()
    assert after < before
