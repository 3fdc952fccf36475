import copy
import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import AffineTransform, SigmoidTransform, SoftplusTransform

from cogrpo.learner.learner import Learner, ScoredBatch
from cogrpo.learner.objectives import (clipped_surrogate, cosine_decay, k3_kl, phi_log_probs, phi_objective,
                                      theta_objective, truncated_is_weight)
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy, squash, squash_log_det
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, SchedulePolicyConfig, TinyArch
from cogrpo.proto.kinds import MASKED_IMAGE_KNOBS
from cogrpo.rollout.masked.estimators import TrajectoryReplay, maskgrpo_rates, random_mask
from cogrpo.rollout.masked_image.family import MaskedImageFamily, effective_knobs, hand_knobs
from cogrpo.rollout.masked.sampler import ScheduleInputs, generate, replay_log_probs
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import full_plan

PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a circle and a triangle",
           "a photo of a green square above a blue triangle"]


def make_policy(model, config: SchedulePolicyConfig = SchedulePolicyConfig()) -> SchedulePolicy:
    return SchedulePolicy(config, MASKED_IMAGE_KNOBS, ScheduleInputs(model, config))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = TinyMDM(TinyArch(d_model=32, layers=1, heads=2, conv_layers=1))
    policy = make_policy(model)
    with torch.no_grad():  # a non-trivial policy, so its gradient test means something
        policy.net[-1].weight.normal_(0, 0.1)
    steps = 4
    schedule = PolicySchedule(policy, hand_knobs(SamplerConfig(), steps))
    traj = MaskedImageFamily(Config()).sample(model, PROMPTS, schedule, full_plan(steps), seed=3)
    return model, policy, traj


def replayed(model, traj, steps, algo, old=None, ref=None):
    """theta's objective over the replayed steps, fresh samples unless `old` says otherwise."""
    estimator = TrajectoryReplay()
    scored = estimator.log_probs(model, traj, steps, {})
    behaviour = estimator.behaviour(traj, steps)
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    return theta_objective(scored.logp, scored.mask, behaviour if old is None else old, behaviour, adv, algo, ref)


def grads(params):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("token_average", ["step", "token"])
def test_theta_surrogate_gradient_is_the_policy_gradient_at_theta_old(setup, token_average):
    model, _, traj = setup
    adv = torch.tensor([1.0, -0.5, 0.25, -2.0])
    steps = list(range(traj.steps))
    model.zero_grad()
    loss, metrics = replayed(model, traj, steps, AlgoConfig(token_average=token_average))
    loss.backward()
    surrogate = grads(model.parameters())
    assert metrics["clip_frac_theta"] == 0.0
    # REINFORCE with the same weighting of A * log p: "step", the mean over (sample, step) of the mean over the
    # step's tokens; "token", the mean over every committed token
    model.zero_grad()
    logp = replay_log_probs(model, traj, steps)
    own = (traj.tensors["commit_step"][:, None, :] == torch.arange(traj.steps)[None, :, None]).float()
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
    loss, _ = phi_objective(policy, traj, adv, steps, torch.ones(4, len(steps), dtype=torch.bool), AlgoConfig())
    loss.backward()
    surrogate = grads(policy.parameters())
    policy.zero_grad()
    mean, std = policy(traj.step_index.expand(4, -1), traj.schedule_steps, traj.sched_state,
                       traj.prompt_feat[:, None].expand(-1, traj.steps, -1))
    logp = SchedulePolicy.log_prob(mean, std, traj.sched_action, traj.sched_mask)
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
    """k3(logp, ref) = exp(ref - logp) - (ref - logp) - 1, an estimate of KL(pi || ref); swapped arguments give
    other values here, so a flipped direction fails."""
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -0.5, -0.5])
    closed_form = [math.exp(-0.5) + 0.5 - 1, math.exp(1.5) - 1.5 - 1, 0.0]  # ref - logp = -0.5, 1.5, 0
    swapped = [math.exp(0.5) - 0.5 - 1, math.exp(-1.5) + 1.5 - 1, 0.0]
    assert torch.allclose(k3_kl(logp, ref), torch.tensor(closed_form))
    assert not torch.allclose(torch.tensor(closed_form), torch.tensor(swapped), atol=1e-2)
    w = truncated_is_weight(torch.tensor([0.0, -3.0]), torch.tensor([-2.0, -1.0]), cap=2.0)
    assert torch.allclose(w, torch.tensor([2.0, math.exp(-2.0)]))


def test_squashed_gaussian_log_probs_match_torch_distributions():
    torch.manual_seed(1)
    hand = torch.tensor([[0.7, 1.0, 3.0, 2.0], [0.2, 0.8, 0.5, 1.0]])
    mean, std = torch.randn(2, 4) * 0.3, torch.rand(4) * 0.5 + 0.1
    action = mean + std * torch.randn(2, 4)
    index, bounds = list(range(4)), [knob.bounds for knob in MASKED_IMAGE_KNOBS]
    knobs = squash(hand, action, index, bounds)
    ours = SchedulePolicy.log_prob(mean, std, action) - squash_log_det(hand, action, index, bounds)
    ref = torch.zeros(2)
    for k in index:
        if bounds[k] == "unit":
            shift, transform = torch.logit(hand[:, k]), SigmoidTransform()
        else:
            shift, transform = hand[:, k] + torch.log(-torch.expm1(-hand[:, k])), SoftplusTransform()
        dist = TransformedDistribution(Normal(mean[:, k], std[k]), [AffineTransform(shift, 1.0), transform])
        ref = ref + dist.log_prob(knobs[:, k])
    assert torch.allclose(ours, ref, atol=1e-4)


def test_a_fresh_policy_reproduces_the_hand_schedule_exactly():
    torch.manual_seed(0)
    model = TinyMDM(TinyArch(d_model=32, layers=1, heads=2, conv_layers=1))
    policy = make_policy(model)
    config = SamplerConfig(guidance=1.5)
    steps = 6
    cond = model.encode_prompts(PROMPTS)
    hand = generate(model, cond, HandSchedule(hand_knobs(config, steps)), steps, seed=5)
    fresh_schedule = PolicySchedule(policy, hand_knobs(config, steps), sample_actions=False)
    fresh = generate(model, cond, fresh_schedule, steps, seed=5)
    assert torch.allclose(fresh.knobs, hand.knobs, atol=1e-5)
    assert torch.equal(fresh.tensors["tokens"], hand.tensors["tokens"])


def test_maskgrpo_rates_and_seeded_masks():
    assert maskgrpo_rates(0.8, 4) == pytest.approx([0.85, 0.9, 0.95, 0.999])
    assert maskgrpo_rates(0.6, 1) == pytest.approx([0.999])
    a, b = random_mask((3, 64), 0.5, seed=7), random_mask((3, 64), 0.5, seed=7)
    assert torch.equal(a, b) and (a.sum(1) == 32).all()
    assert not torch.equal(a, random_mask((3, 64), 0.5, seed=8))


def test_cosine_decay_runs_theta_lr_from_lr_to_its_floor_over_the_run(setup):
    assert [cosine_decay(p, 0.1) for p in (-1.0, 0.0, 0.5, 1.0, 2.0)] == pytest.approx([1.0, 1.0, 0.55, 0.1, 0.1])
    model, policy, traj = setup
    trained = torch.tensor([[True, True, False, False]] * 4)
    batch = ScoredBatch(traj, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool), trained)
    config = Config(algo=AlgoConfig(mode="grpo", lr=1e-3, lr_decay="cosine", min_lr_ratio=0.2),
                    train={"iterations": 11})
    family = MaskedImageFamily(config)
    learner = Learner(copy.deepcopy(model), policy, config, family)
    for iteration, lr in ((0, 1e-3), (5, 6e-4), (10, 2e-4)):
        assert learner.update(batch, iteration)["lr_theta"] == pytest.approx(lr)
        assert learner.theta_step.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    constant = Learner(copy.deepcopy(model), policy, config.model_copy(update={"algo": AlgoConfig(lr=1e-3)}), family)
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
    assert "".join(symbol[algo.phases(i)] for i in range(len(pattern))) == pattern


def test_a_stale_steps_importance_weight_under_step_product_is_the_capped_product_of_its_tokens():
    """One ratio per step: its behaviour -> old weight is exp of the step's summed log-ratio, capped; not a mean of
    per-token capped weights (1.27 here for a step whose weight is exactly 1, 1.65 for one capped at 2)."""
    mask = torch.tensor([[[True, True, False], [True, True, True]]])  # one sample, two steps
    behaviour = torch.zeros(1, 2, 3)
    old = torch.tensor([[[0.5, -0.5, 9.0], [0.5, 0.5, 0.5]]])  # step 0: +0.5 - 0.5 = 0; step 1: 1.5
    logp = old.clone()  # the update starts at theta_old: ratio 1, the surrogate is the advantage
    adv = torch.tensor([2.0])
    algo = AlgoConfig(ratio="step_product", is_cap=2.0)
    loss, _ = theta_objective(logp, mask, old, behaviour, adv, algo)
    assert loss.item() == pytest.approx(-(2.0 * 1.0 + 2.0 * 2.0) / 2)
    fresh, _ = theta_objective(logp, mask, old, old, adv, algo)  # behaviour == old: weight 1 everywhere
    assert fresh.item() == pytest.approx(-2.0)


def test_step_product_clips_one_ratio_per_step_the_product_of_its_tokens_ratios():
    """step_product: a step's ratio is exp of its summed token log-ratios, clipped as a whole; token_mean averages
    the clipped token ratios. Step 0's tokens move by 0.15 each (product 1.35, clipped to 1.2; each 1.16, not
    clipped), step 1's by 0.1, -0.08 and 0; step 0's masked third token (5.0) counts in neither."""
    mask = torch.tensor([[[True, True, False], [True, True, True]]])
    old = torch.zeros(1, 2, 3)
    logp = torch.tensor([[[0.15, 0.15, 5.0], [0.1, -0.08, 0.0]]])
    adv = torch.tensor([1.0])
    product, metrics = theta_objective(logp, mask, old, None, adv, AlgoConfig(ratio="step_product"))
    assert product.item() == pytest.approx(-(1.2 + math.exp(0.1 - 0.08)) / 2)
    assert metrics["clip_frac_theta"] == 0.5  # step 0 clipped, step 1 not
    mean, metrics = theta_objective(logp, mask, old, None, adv, AlgoConfig())
    token_mean = (math.exp(0.15) + (math.exp(0.1) + math.exp(-0.08) + 1.0) / 3) / 2
    assert mean.item() == pytest.approx(-token_mean)
    assert metrics["clip_frac_theta"] == 0.0
    assert abs(product.item() - mean.item()) > 0.01


def test_knobs_that_cannot_change_the_outcome_carry_no_log_prob(setup):
    """The re-mask ratio pinned at 0 on the last step, the re-mask temperature on the last MaskGIT step and on every
    emerge step: the tokens do not depend on them, so phi acts their mean there and scores nothing of them."""
    model, policy, _ = setup
    names = [k.name for k in MASKED_IMAGE_KNOBS]
    ratio, remask_t = names.index("remask_ratio"), names.index("remask_temperature")
    steps, cond = 4, model.encode_prompts(PROMPTS)
    hand = hand_knobs(SamplerConfig(), steps)
    for sampler, pinned in (("maskgit", [(3, ratio), (3, remask_t)]),
                            ("emerge", [(3, ratio)] + [(t, remask_t) for t in range(4)])):
        effective = effective_knobs(hand, list(range(steps)), sampler)
        assert sorted(map(tuple, (~effective).nonzero().tolist())) == sorted(pinned), sampler
        moved = hand.clone()
        for t, k in pinned:
            if k == remask_t:
                moved[t, k] = 40.0  # a wild value for a knob that must not matter
        same = [generate(model, cond, HandSchedule(table), steps, 3, sampler).tensors["tokens"]
                for table in (hand, moved)]
        assert torch.equal(*same), sampler
    family = MaskedImageFamily(Config())
    traj = family.sample(model, PROMPTS, PolicySchedule(policy, hand), full_plan(steps), seed=11)
    assert traj.sched_mask.tolist()[-1] == [False, True, False, True] and traj.sched_mask[:-1].all()
    mean, _ = policy(torch.full((4,), 3), steps, traj.sched_state[:, 3], traj.prompt_feat)
    assert torch.equal(traj.sched_action[:, 3, ~traj.sched_mask[3]], mean[:, ~traj.sched_mask[3]])  # no noise
    wild = copy.copy(traj)
    wild.sched_action = traj.sched_action.clone()
    wild.sched_action[:, 3, ~traj.sched_mask[3]] += 5.0
    steps_trained = list(range(steps))
    assert torch.allclose(phi_log_probs(policy, wild, steps_trained)[0], phi_log_probs(policy, traj, steps_trained)[0])
    assert torch.allclose(phi_log_probs(policy, traj, steps_trained)[0], traj.sched_logp, atol=1e-5)


def test_a_stale_sample_under_a_remasking_estimator_is_weighted_by_the_samplers_own_likelihood_ratio(setup):
    """MaskGRPO's scores are not the sampler's, so a stale sample's behaviour -> old weight comes from replaying the
    sampler's actions: 1 under the weights that sampled it, exp of the per-token mean log-ratio under moved ones."""
    model, policy, traj = setup
    config = Config(algo=AlgoConfig(theta_likelihood="maskgrpo", inner_epochs=2))
    steps, select = list(range(traj.steps)), torch.ones(traj.batch_size, traj.steps, dtype=torch.bool)
    learner = Learner(model, policy, config, MaskedImageFamily(config))
    with torch.no_grad():
        assert torch.allclose(learner._stale_log_weight(traj, steps, select), torch.zeros(len(PROMPTS)), atol=1e-5)
        moved = copy.deepcopy(model)
        moved.head.bias.add_(torch.linspace(-1, 1, moved.head.bias.numel()))
        learner.model = moved
        replay = TrajectoryReplay().log_probs(moved, traj, steps, {}, select)
        recorded = traj.tensors["token_logp"][:, None, :]
        expected = [((replay.logp[b] - recorded[b]) * replay.mask[b]).sum() / replay.mask[b].sum()
                    for b in range(len(PROMPTS))]
        got = learner._stale_log_weight(traj, steps, select)
    assert torch.allclose(got, torch.stack(expected), atol=1e-5) and got.abs().min() > 1e-3


def test_maskgrpo_refuses_a_single_inner_epoch():
    """With one inner epoch MaskGRPO's only rate is 0.999: the whole sample masked, no truncation."""
    with pytest.raises(ValueError, match="inner_epochs"):
        AlgoConfig(theta_likelihood="maskgrpo", inner_epochs=1)
