from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from cogrpo.learner.objectives import theta_objective
from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import AlgoConfig, Config, SamplerConfig, TinyArch, load_config
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.masked.estimators import (D1, D1_PROMPT_MASK, MaskGRPO, UniGRPO, fading_mask, maskgrpo_rates,
                                              random_mask)
from cogrpo.rollout.masked.sampler import generate
from cogrpo.rollout.masked_image.family import MaskedImageFamily
from cogrpo.rollout.masked_image.family import hand_knobs as image_hand_knobs
from cogrpo.rollout.masked_text.family import MaskedTextFamily
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import full_plan

TINY = ["model.kind=tiny_mdlm", "model.checkpoint=null", "model.arch.d_model=32", "model.arch.layers=1",
        "model.arch.heads=2"]
PROMPTS = ["347+58=", "47*8=", "1234341220404020", "3,7,25->46", "612-75=", "0140000040031304"]
ADV = torch.tensor([1.0, -0.5, 0.25, -2.0, 0.75, -1.0])
EPOCHS = 4
STEPS = list(range(12))


@pytest.fixture(scope="module")
def text():
    """A fresh tiny TinyMDLM, its family (sampler temperature 0.7) and a trajectory of six prompts."""
    family = MaskedTextFamily(load_config(None, [*TINY, "sampler.temperature=0.7"]))
    torch.manual_seed(0)
    model = family.build_model()
    traj = family.sample(model, PROMPTS, HandSchedule(family.hand_schedule(12)), full_plan(12), seed=11)
    return family, model, traj


@pytest.fixture(scope="module")
def wide(text):
    """The trajectory repeated to 600 samples (same batch seed): enough for mask statistics."""
    return Trajectory.cat([text[2]] * 100)


# ---- the masks ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.5, 0.8, 0.9, 0.95, 0.999])
def test_fading_mask_masks_about_rate_of_the_positions_later_ones_more_often(rate):
    masked = fading_mask((3000, 24), rate, 7).float()
    assert masked.mean().item() == pytest.approx(rate, abs=0.01)
    third = masked.mean(0).view(3, 8).mean(1)  # the first, middle and last eight positions
    assert third[0] <= third[1] <= third[2] and (third[0] < third[2] or rate > 0.99)
    assert (masked[:, -1] == 1).all()


@pytest.mark.parametrize("shape, rate", [((64, 24), 0.0), ((64, 24), 0.01), ((64, 24), 0.6), ((5, 1), 0.0),
                                         ((3, 2), 0.3), ((64, 24), 0.999)])
def test_fading_mask_is_reproducible_by_seed_and_masks_at_least_one_position(shape, rate):
    mask = fading_mask(shape, rate, 3)
    assert mask.shape == shape and mask.dtype == torch.bool and mask.any(1).all()
    assert torch.equal(mask, fading_mask(shape, rate, 3))
    if shape[1] > 2 and 0.2 < rate < 0.99:  # at low rates only the last positions can be masked
        assert not torch.equal(mask, fading_mask(shape, rate, 4))


def test_maskgrpo_rates_rise_from_gamma_to_0_999():
    assert maskgrpo_rates(0.8, 4) == pytest.approx([0.85, 0.9, 0.95, 0.999])
    assert maskgrpo_rates(0.5, 1) == [0.999]
    rates = maskgrpo_rates(0.3, 12)
    assert all(0.3 < a < b for a, b in zip(rates, rates[1:])) and rates[-1] == 0.999


def test_maskgrpo_draws_one_fading_mask_per_epoch_at_rising_rates(text, wide):
    _, _, traj = text
    estimator = MaskGRPO(AlgoConfig(inner_epochs=EPOCHS), fading=True)
    views = estimator.inputs(wide, EPOCHS)
    assert len(views) == EPOCHS and all(v["masked"].shape == wide.tensors["tokens"].shape for v in views)
    fractions = [v["masked"].float().mean().item() for v in views]
    assert fractions == pytest.approx(maskgrpo_rates(0.8, EPOCHS), abs=0.01)
    assert all(a < b for a, b in zip(fractions, fractions[1:]))
    first = views[0]["masked"].float().mean(0)
    assert first[:8].mean() < first[16:].mean()  # text: AR-like, later positions masked more often
    again = estimator.inputs(wide, EPOCHS)
    assert all(torch.equal(a["masked"], b["masked"]) for a, b in zip(views, again))  # old, ref, new see the same
    small = estimator.inputs(traj, EPOCHS)
    assert not torch.equal(small[0]["masked"], small[1]["masked"])


def test_the_image_maskgrpo_masks_uniformly_an_exact_count():
    mask = random_mask((400, 64), 0.85, 5)
    assert (mask.sum(1) == round(0.85 * 64)).all()
    column = mask.float().mean(0)
    assert abs(column[:21].mean() - column[-21:].mean()) < 0.05


def test_d1_masks_the_whole_completion_and_15_percent_of_the_prompt_anew_each_epoch(text, wide):
    views = D1().inputs(wide, EPOCHS)
    assert len(views) == EPOCHS
    assert all(v["masked"].all() and v["masked"].shape == wide.tensors["tokens"].shape for v in views)
    prompt_masks = [v["prompt_masked"] for v in views]
    assert all(m.shape == wide.tensors["cond"].shape for m in prompt_masks)
    for m in prompt_masks:
        assert m.float().mean().item() == pytest.approx(D1_PROMPT_MASK, abs=0.02)
    assert not torch.equal(prompt_masks[0], prompt_masks[1])
    assert all(torch.equal(a["prompt_masked"], b["prompt_masked"])
               for a, b in zip(views, D1().inputs(wide, EPOCHS)))


@pytest.mark.parametrize("epochs", [2, 3, 4, 6])
def test_unigrpo_rates_are_spaced_one_over_mu_apart_mod_1(text, epochs):
    _, _, traj = text
    n, starts = traj.tensors["tokens"].shape[1], set()
    for seed in range(12):
        shifted = replace(traj, seed=seed)
        views = UniGRPO().inputs(shifted, epochs)
        counts = []
        for view in views:
            per_row = view["masked"].sum(1)
            assert (per_row == per_row[0]).all()  # every row masked at the epoch's rate
            counts.append(int(per_row[0]))
        starts.add(counts[0])
        steps = {(b - a) % n for a, b in zip(counts, counts[1:])}
        assert steps == {n // epochs} or 1 in counts, (seed, counts)  # 1: a rate rounded to no position
        assert all(torch.equal(a["masked"], b["masked"]) for a, b in zip(views, UniGRPO().inputs(shifted, epochs)))
    assert len(starts) > 3  # the start is drawn from the batch seed


# ---- the log-probs -----------------------------------------------------------------------------------------------

def conditional_log_probs(model, tokens, canvas, cond):
    return F.log_softmax(model(canvas, cond), -1).gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("name", ["maskgrpo", "unigrpo"])
def test_re_masking_scores_the_masked_tokens_at_temperature_1_without_guidance(text, name):
    family, model, traj = text
    estimator = family.estimator(name, AlgoConfig(inner_epochs=EPOCHS))
    view = estimator.inputs(traj, EPOCHS)[1]
    scored = estimator.log_probs(model, traj, STEPS, view)
    tokens, masked = traj.tensors["tokens"], view["masked"]
    assert scored.logp.shape == scored.mask.shape == (len(PROMPTS), 1, 24) and torch.equal(scored.mask[:, 0], masked)
    with torch.no_grad():
        expected = conditional_log_probs(model, tokens, tokens.masked_fill(masked, model.mask_id), traj.tensors["cond"])
    assert torch.allclose(scored.logp[:, 0][masked], expected[masked], atol=1e-5)
    assert estimator.behaviour(traj, STEPS) is None


def test_d1_scores_the_completion_given_the_partly_masked_prompt(text):
    family, model, traj = text
    estimator = family.estimator("d1", AlgoConfig(inner_epochs=EPOCHS))
    view = estimator.inputs(traj, EPOCHS)[0]
    assert view["prompt_masked"].any()
    scored = estimator.log_probs(model, traj, STEPS, view)
    tokens, cond = traj.tensors["tokens"], traj.tensors["cond"]
    canvas = torch.full_like(tokens, model.mask_id)
    with torch.no_grad():
        expected = conditional_log_probs(model, tokens, canvas, cond.masked_fill(view["prompt_masked"], model.mask_id))
        whole_prompt = conditional_log_probs(model, tokens, canvas, cond)
    assert scored.mask.all() and torch.allclose(scored.logp[:, 0], expected, atol=1e-5)
    assert not torch.allclose(scored.logp[:, 0], whole_prompt, atol=1e-4)


def grads(model):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("token_average", ["step", "token"])
@pytest.mark.parametrize("name", ["trajectory", "maskgrpo", "d1", "unigrpo"])
def test_at_theta_old_the_clipped_objective_is_the_advantage_weighted_log_likelihood(text, name, token_average):
    family, model, traj = text
    algo = AlgoConfig(inner_epochs=EPOCHS, token_average=token_average, theta_likelihood=name)
    estimator = family.estimator(name, algo)
    view = estimator.inputs(traj, EPOCHS)[-1]
    model.zero_grad()
    scored = estimator.log_probs(model, traj, STEPS, view)
    loss, metrics = theta_objective(scored.logp, scored.mask, scored.logp.detach(), estimator.behaviour(traj, STEPS),
                                    ADV, algo)
    loss.backward()
    surrogate = grads(model)
    assert metrics["clip_frac_theta"] == 0.0 and metrics["approx_kl_theta"] == pytest.approx(0.0, abs=1e-7)
    model.zero_grad()
    scored = estimator.log_probs(model, traj, STEPS, view)
    mask = scored.mask.float()
    weighted = ADV[:, None, None] * scored.logp * mask
    if token_average == "step":  # each (sample, step) with actions: the mean over its actions; then their mean
        per_step = weighted.sum(-1) / mask.sum(-1).clamp(min=1)
        (-per_step[scored.mask.any(-1)].mean()).backward()
    else:  # every action of the batch alike
        (-weighted.sum() / mask.sum()).backward()
    reference = grads(model)
    assert sum(g.abs().sum() for g in reference) > 0
    for a, b in zip(surrogate, reference):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


# ---- the image family's MaskGRPO applies the rollout's guidance --------------------------------------------------

@pytest.fixture(scope="module")
def image():
    torch.manual_seed(0)
    model = TinyMDM(TinyArch(d_model=32, layers=1, heads=2, conv_layers=1)).eval()
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle"]
    cond = model.encode_prompts(prompts)

    def rollout(guidance: float) -> Trajectory:
        table = image_hand_knobs(SamplerConfig(guidance=guidance, temperature=0.8), 4)
        return generate(model, cond, HandSchedule(table), 4, 2, "maskgit")

    return model, rollout


@pytest.mark.parametrize("guidance", [1.5, 3.0])
def test_image_maskgrpo_scores_with_the_rollouts_guidance_at_temperature_1(image, guidance):
    model, rollout = image
    traj = rollout(guidance)
    estimator = MaskedImageFamily(Config()).estimator("maskgrpo", AlgoConfig(inner_epochs=2))
    view = estimator.inputs(traj, 2)[0]
    scored = estimator.log_probs(model, traj, [0, 1, 2, 3], view)
    tokens, cond, masked = traj.tensors["tokens"], traj.tensors["cond"], view["masked"]
    canvas = tokens.masked_fill(masked, model.mask_id)
    with torch.no_grad():
        guided = guided_log_probs_by_hand(model, tokens, masked, cond, guidance)
        conditional = conditional_log_probs(model, tokens, canvas, cond)
    got = scored.logp[:, 0][masked]
    assert torch.allclose(got, guided[masked], atol=1e-5)
    assert not torch.allclose(got, conditional[masked], atol=1e-3)


def guided_log_probs_by_hand(model, tokens, masked, cond, guidance):
    """log softmax(l_c + g (l_c - l_u)) of the finished tokens on their re-masked canvas."""
    canvas = tokens.masked_fill(masked, model.mask_id)
    l_c, l_u = model(canvas, cond), model(canvas, model.null_conditioning(len(tokens)))
    return F.log_softmax(l_c + guidance * (l_c - l_u), -1).gather(-1, tokens[..., None]).squeeze(-1)


@pytest.mark.parametrize("token_average", ["step", "token"])
def test_image_maskgrpo_gradient_at_theta_old_is_the_advantage_weighted_log_likelihoods(image, token_average):
    """At theta == theta_old the clipped surrogate's gradient is REINFORCE's on the re-masked tokens' guided
    log-probs, computed here from the model by hand: per sample the mean over its masked tokens ("step", S = 1),
    or every masked token of the batch alike ("token"); then the mean over samples."""
    model, rollout = image
    traj, adv = rollout(1.5), torch.tensor([1.0, -0.5, 2.0])
    algo = AlgoConfig(inner_epochs=2, theta_likelihood="maskgrpo", token_average=token_average)
    estimator = MaskedImageFamily(Config()).estimator("maskgrpo", algo)
    view = estimator.inputs(traj, 2)[0]
    model.zero_grad()
    scored = estimator.log_probs(model, traj, [0, 1, 2, 3], view)
    loss, _ = theta_objective(scored.logp, scored.mask, scored.logp.detach(), None, adv, algo)
    loss.backward()
    surrogate = grads(model)
    model.zero_grad()
    masked = view["masked"].float()
    logp = guided_log_probs_by_hand(model, traj.tensors["tokens"], view["masked"], traj.tensors["cond"], 1.5)
    weighted = adv[:, None] * logp * masked
    if token_average == "step":
        (-(weighted.sum(-1) / masked.sum(-1)).mean()).backward()
    else:
        (-weighted.sum() / masked.sum()).backward()
    reference = grads(model)
    assert sum(g.abs().sum() for g in reference) > 0
    for a, b in zip(surrogate, reference):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_image_maskgrpo_without_guidance_is_the_conditional_model(image):
    model, rollout = image
    traj = rollout(0.0)
    estimator = MaskedImageFamily(Config()).estimator("maskgrpo", AlgoConfig(inner_epochs=2))
    view = estimator.inputs(traj, 2)[1]
    scored = estimator.log_probs(model, traj, [0, 1, 2, 3], view)
    tokens, masked = traj.tensors["tokens"], view["masked"]
    with torch.no_grad():
        expected = conditional_log_probs(model, tokens, tokens.masked_fill(masked, model.mask_id), traj.tensors["cond"])
    assert torch.allclose(scored.logp[:, 0][masked], expected[masked], atol=1e-5)
