import copy
import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, SigmoidTransform, SoftplusTransform

from cogrpo.learner.cogrpo import Learner, ScoredBatch, phi_objective, theta_trajectory_objective, training_phases
from cogrpo.learner.objectives import (clipped_surrogate, cosine_decay, k3_kl, maskgrpo_rates, random_mask,
                                      truncated_is_weight)
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy, squash, squash_log_det
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig, TinyMDMArch
from cogrpo.proto.messages import KNOBS
from cogrpo.rollout.sampler import generate, replay_log_probs
from cogrpo.rollout.schedule import HandSchedule, hand_knobs

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a circle and a triangle",
           "a photo of a green square above a blue triangle"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyMDM(TinyMDMArch(d_model=32, layers=1, heads=2, conv_layers=1))
    policy = SchedulePolicy(SchedulePolicyConfig(), model.prompt_feature_dim)
    with torch.no_grad():  # a non-trivial policy, so its gradient test means something
        policy.net[-1].weight.normal_(0, 0.1)
    steps = 4
    schedule = PolicySchedule(policy, hand_knobs(SamplerConfig(), steps))
    traj = generate(model, model.encode_prompts(PROMPTS), schedule, steps, seed=3)
    return model, policy, traj


def grads(params):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("token_average", ["step", "token"])
def test_theta_surrogate_gradient_is_the_policy_gradient_at_theta_old(setup, token_average):
    model, _, traj = setup
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    steps = list(range(traj.steps))
    model.zero_grad()
    loss, metrics = theta_trajectory_objective(model, traj, adv, steps, AlgoConfig(token_average=token_average))
    loss.backward()
    surrogate = grads(model.parameters())
    assert metrics["clip_frac_theta"] == 0.0
    # REINFORCE with the same weighting of A * log p: "step", the mean over (sample, step) of the mean over the
    # step's tokens; "token", the mean over every committed token
    model.zero_grad()
    logp = replay_log_probs(model, traj, steps)
    own = (traj.commit_step[:, None, :] == torch.arange(traj.steps)[None, :, None]).float()
    weighted = adv[:, None, None] * logp * own
    if token_average == "step":
        (-(weighted.sum(-1) / own.sum(-1)).mean()).backward()
    else:
        (-weighted.sum() / own.sum()).backward()
    for a, b in zip(surrogate, grads(model.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


def test_phi_surrogate_gradient_is_the_policy_gradient_at_phi_old(setup):
    _, policy, traj = setup
    adv = torch.tensor([0.5, -1.0, 1.5, 0.0])
    steps = list(range(traj.steps))
    policy.zero_grad()
    loss, _ = phi_objective(policy, traj, adv, steps, AlgoConfig())
    loss.backward()
    surrogate = grads(policy.parameters())
    policy.zero_grad()
    mean, std = policy(traj.step_index.expand(4, -1), traj.schedule_steps, traj.masked_fraction_before(),
                       traj.prompt_feat[:, None].expand(-1, traj.steps, -1))
    logp = SchedulePolicy.log_prob(mean, std, traj.sched_action)
    assert torch.allclose(logp, traj.sched_logp, atol=1e-5)  # behaviour log-probs replay exactly
    (-(adv[:, None] * logp).mean()).backward()
    for a, b in zip(surrogate, grads(policy.parameters())):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("ratio, adv, value, slope", [
    (1.5, 1.0, 1.2, 0.0),     # too good: clipped, no gradient pushes further
    (1.5, -1.0, -1.5, -1.5),  # pessimistic side: unclipped
    (0.5, 1.0, 0.5, 0.5),     # unclipped
    (0.5, -1.0, -0.8, 0.0),   # already much less likely: clipped
    (1.1, 1.0, 1.1, 1.1),     # inside the trust region
])
def test_clipping_bites_where_it_should(ratio, adv, value, slope):
    logratio = torch.tensor(math.log(ratio), requires_grad=True)
    surrogate, _ = clipped_surrogate(logratio, torch.tensor(adv), eps=0.2)
    surrogate.backward()
    assert surrogate.item() == pytest.approx(value)
    assert logratio.grad.item() == pytest.approx(slope)  # d/dlogratio = ratio * A when unclipped


def test_k3_and_truncated_importance_weight():
    logp = torch.tensor([-1.0, -2.0])
    assert torch.allclose(k3_kl(logp, logp), torch.zeros(2))
    assert (k3_kl(logp, torch.tensor([-1.5, -0.5])) > 0).all()
    w = truncated_is_weight(torch.tensor([0.0, -3.0]), torch.tensor([-2.0, -1.0]), cap=2.0)
    assert torch.allclose(w, torch.tensor([2.0, math.exp(-2.0)]))


def test_squashed_gaussian_log_probs_match_torch_distributions():
    torch.manual_seed(1)
    hand = torch.tensor([[0.7, 1.0, 3.0, 2.0], [0.2, 0.8, 0.5, 1.0]])
    mean, std = torch.randn(2, 4) * 0.3, torch.rand(4) * 0.5 + 0.1
    action = mean + std * torch.randn(2, 4)
    index = list(range(4))
    knobs = squash(hand, action, index)
    ours = SchedulePolicy.log_prob(mean, std, action) - squash_log_det(hand, action, index)
    ref = torch.zeros(2)
    for k in index:
        if KNOBS[k] == "remask_ratio":
            shift, transform = torch.logit(hand[:, k]), SigmoidTransform()
        else:
            shift, transform = hand[:, k] + torch.log(-torch.expm1(-hand[:, k])), SoftplusTransform()
        dist = TransformedDistribution(Normal(mean[:, k], std[k]), [AffineTransform(shift, 1.0), transform])
        ref = ref + dist.log_prob(knobs[:, k])
    assert torch.allclose(ours, ref, atol=1e-4)


def test_a_fresh_policy_reproduces_the_hand_schedule_exactly():
    torch.manual_seed(0)
    model = TinyMDM(TinyMDMArch(d_model=32, layers=1, heads=2, conv_layers=1))
    policy = SchedulePolicy(SchedulePolicyConfig(), model.prompt_feature_dim)
    config = SamplerConfig(guidance=1.5)
    steps = 6
    cond = model.encode_prompts(PROMPTS)
    hand = generate(model, cond, HandSchedule(config, steps), steps, seed=5)
    fresh_schedule = PolicySchedule(policy, hand_knobs(config, steps), sample_actions=False)
    fresh = generate(model, cond, fresh_schedule, steps, seed=5)
    assert torch.allclose(fresh.knobs, hand.knobs, atol=1e-5)
    assert torch.equal(fresh.tokens, hand.tokens)


def test_maskgrpo_rates_and_seeded_masks():
    assert maskgrpo_rates(0.8, 4) == pytest.approx([0.85, 0.9, 0.95, 0.999])
    assert maskgrpo_rates(0.6, 1) == pytest.approx([0.999])
    a, b = random_mask((3, 64), 0.5, seed=7), random_mask((3, 64), 0.5, seed=7)
    assert torch.equal(a, b) and (a.sum(1) == 32).all()
    assert not torch.equal(a, random_mask((3, 64), 0.5, seed=8))


def test_cosine_decay_runs_theta_lr_from_lr_to_its_floor_over_the_run(setup):
    assert [cosine_decay(p, 0.1) for p in (-1.0, 0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])
    model, policy, traj = setup
    batch = ScoredBatch(traj, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool), [0, 1])
    config = Config(algo=AlgoConfig(mode="grpo", lr=1e-3, lr_decay="cosine", min_lr_ratio=0.2),
                    train={"iterations": 11})
    learner = Learner(copy.deepcopy(model), policy, config)
    for iteration, lr in ((0, 1e-3), (5, 6e-4), (10, 2e-4)):
        assert learner.update(batch, iteration)["lr_theta"] == pytest.approx(lr)
        assert learner.theta_step.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    constant = Learner(copy.deepcopy(model), policy, config.model_copy(update={"algo": AlgoConfig(lr=1e-3)}))
    assert constant.update(batch, 10)["lr_theta"] == 1e-3


@pytest.mark.parametrize("settings, pattern", [
    ({"alternate_every": 2}, "TTPPTTPP"),
    ({"alternate_every": 2, "first": "phi"}, "PPTTPPTT"),
    ({"alternate_every": 2, "alternate_every_phi": 3}, "TTPPPTTPPP"),
    ({"alternate_every": 1, "alternate_every_phi": 3, "first": "phi"}, "PPPTPPPT"),
    ({"alternate_every": 2, "update": "joint"}, "JJJJ"),
])
def test_alternation_runs_blocks_of_each_policy_in_turn(settings, pattern):
    algo = AlgoConfig(**settings)
    symbol = {(True, False): "T", (False, True): "P", (True, True): "J"}
    assert "".join(symbol[training_phases(algo, i)] for i in range(len(pattern))) == pattern
