from collections import Counter

import pytest
import torch

from cogrpo.proto.config import AlgoConfig, SamplerConfig, StepSubsetConfig, load_config
from cogrpo.proto.errors import InputError
from cogrpo.rollout.masked.sampler import blocks_of, generate
from cogrpo.rollout.masked_text.family import KNOB_NAMES, MaskedTextFamily, hand_knobs
from cogrpo.rollout.schedule import HandSchedule
from cogrpo.rollout.steps import full_plan, step_plan

TINY = ["model.kind=tiny_mdlm", "model.checkpoint=null", "model.arch.d_model=32", "model.arch.layers=1",
        "model.arch.heads=2"]
PROMPTS = ["347+58=", "47*8=", "1234341220404020", "3,7,25->46", "612-75=", "0140000040031304"]


def family_of(*overrides: str) -> MaskedTextFamily:
    return MaskedTextFamily(load_config(None, [*TINY, *overrides]))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return family_of().build_model().eval()


def run(model, steps=12, block_length=8, sampler="low_confidence", seed=0, **knobs):
    blocks = model.num_tokens // (block_length or model.num_tokens)
    table = hand_knobs(SamplerConfig(**knobs), steps, blocks)
    return generate(model, model.encode_prompts(PROMPTS), HandSchedule(table), steps, seed, sampler,
                    block_length=block_length)


@pytest.fixture(scope="module")
def decoded(model):
    """run(model, steps, block_length, sampler), each decoded once for the module."""
    cache = {}
    return lambda *args: cache[args] if args in cache else cache.setdefault(args, run(model, *args))


def llada_counts(size: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens: size // steps per step, the remainder one each on the first steps."""
    return [size // steps + (k < size % steps) for k in range(steps)]


# (block_length, steps): even and uneven shares, one block, more steps than positions
LAYOUTS = [(8, 12), (8, 3), (8, 9), (8, 15), (12, 10), (4, 18), (6, 4), (24, 7), (None, 5), (3, 32), (1, 24)]


@pytest.mark.parametrize("sampler", ["low_confidence", "random"])
@pytest.mark.parametrize("block_length, steps", LAYOUTS)
def test_blocks_are_decoded_left_to_right_each_fully_within_its_steps(model, decoded, sampler, block_length, steps):
    traj = decoded(steps, block_length, sampler)
    size, per_block = blocks_of(model.num_tokens, steps, block_length)
    tokens, commit_step = traj.tensors["tokens"], traj.tensors["commit_step"]
    assert (tokens != model.mask_id).all() and (commit_step < steps).all()
    block = torch.arange(model.num_tokens) // size
    # block k's positions are committed at its own steps k * per_block .. (k + 1) * per_block - 1
    assert torch.equal(commit_step // per_block, block.expand_as(commit_step))
    for k in range(int(block.max())):  # hence every one of them before any of block k + 1
        assert commit_step[:, block == k].amax(1).lt(commit_step[:, block == k + 1].amin(1)).all()


@pytest.mark.parametrize("sampler", ["low_confidence", "random"])
@pytest.mark.parametrize("block_length, steps", LAYOUTS)
def test_each_block_commits_llada_s_even_count_per_step(model, decoded, sampler, block_length, steps):
    traj = decoded(steps, block_length, sampler)
    size, per_block = blocks_of(model.num_tokens, steps, block_length)
    expected = Counter(llada_counts(size, per_block))
    for row in traj.tensors["commit_step"]:
        counts = torch.bincount(row, minlength=steps).view(-1, per_block)  # (blocks, steps per block)
        for block_counts in counts.tolist():
            assert Counter(block_counts) == expected, block_counts
            assert max(block_counts) - min(block_counts) <= 1 or size < per_block


def test_hand_knobs_restart_in_every_block_and_leave_nothing_masked_at_its_end():
    table = hand_knobs(SamplerConfig(temperature=0.7, remask_temperature=3.0), 12, 3)
    ratio, tau, g = (table[:, KNOB_NAMES.index(k)] for k in ("remask_ratio", "temperature", "remask_temperature"))
    assert table.shape == (12, 3) and torch.equal(ratio.view(3, 4), ratio[:4].expand(3, 4))
    assert torch.allclose(ratio[:4], torch.tensor([0.75, 0.5, 0.25, 0.0])) and (ratio[3::4] == 0).all()
    assert torch.allclose(tau, torch.tensor(0.7))
    assert torch.allclose(g[:4], torch.tensor([3.0, 2.25, 1.5, 0.75])) and torch.equal(g[4:8], g[:4])


def test_random_re_masking_chooses_other_positions_than_low_confidence(decoded):
    confident, random = decoded(12, 8, "low_confidence"), decoded(12, 8, "random")
    assert not torch.equal(confident.tensors["commit_step"], random.tensors["commit_step"])
    # and random's choice ignores the model: another model, the same commit order
    torch.manual_seed(1)
    other = family_of().build_model().eval()
    again = run(other, sampler="random")
    assert torch.equal(again.tensors["commit_step"], random.tensors["commit_step"])
    assert not torch.equal(run(other, sampler="low_confidence").tensors["commit_step"],
                           confident.tensors["commit_step"])


@pytest.mark.parametrize("sampler", ["low_confidence", "random"])
def test_deterministic_for_a_seed_and_different_across_seeds(model, sampler):
    a, b, c = run(model, sampler=sampler, seed=3), run(model, sampler=sampler, seed=3), run(model, sampler=sampler,
                                                                                           seed=4)
    for name in ("tokens", "commit_step", "token_logp"):
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert not torch.equal(a.tensors["tokens"], c.tensors["tokens"])


@pytest.mark.parametrize("n, steps, block_length, expected", [
    (24, 12, 8, (8, 4)), (24, 5, None, (24, 5)), (24, 24, 1, (1, 1)), (24, 6, 24, (24, 6)), (24, 48, 12, (12, 24))])
def test_blocks_of_splits_positions_and_steps(n, steps, block_length, expected):
    assert blocks_of(n, steps, block_length) == expected


@pytest.mark.parametrize("n, steps, block_length", [(24, 10, 8), (24, 1, 8), (24, 4, 8), (24, 12, 5), (24, 12, 7),
                                                    (24, 12, 48), (24, 23, 1)])
def test_blocks_of_refuses_steps_not_divisible_by_the_blocks(n, steps, block_length):
    with pytest.raises(ValueError):
        blocks_of(n, steps, block_length)


def test_generate_and_the_family_refuse_steps_the_blocks_do_not_divide(model):
    table = hand_knobs(SamplerConfig(), 10, 1)
    with pytest.raises(ValueError, match="divisible by 3"):
        generate(model, model.encode_prompts(PROMPTS), HandSchedule(table), 10, 0, "low_confidence", block_length=8)
    with pytest.raises(InputError, match="3 blocks"):
        family_of().hand_schedule(10)


@pytest.mark.parametrize("sampler", ["low_confidence", "random"])
def test_the_trajectory_estimator_replays_the_recorded_log_probs(model, sampler):
    family = family_of(f"sampler.kind={sampler}", "sampler.temperature=0.7")
    traj = family.sample(model, PROMPTS, HandSchedule(family.hand_schedule(12)), full_plan(12), seed=5)
    assert traj.knobs.shape == (len(PROMPTS), 12, 3)
    estimator = family.estimator("trajectory", AlgoConfig())
    steps = list(range(12))
    scored = estimator.log_probs(model, traj, steps, estimator.inputs(traj, 1)[0])
    behaviour = estimator.behaviour(traj, steps)
    assert scored.logp.shape == scored.mask.shape == behaviour.shape == (len(PROMPTS), 12, model.num_tokens)
    assert (scored.mask.sum(1) == 1).all()  # every position is one step's action
    assert (behaviour[scored.mask] < 0).all()
    assert torch.allclose(scored.logp[scored.mask], behaviour[scored.mask], atol=1e-5)
    assert torch.allclose(traj.knobs[0, :, KNOB_NAMES.index("temperature")], torch.tensor(0.7))


def test_greedy_steps_outside_a_window_carry_no_log_prob_and_keep_the_block_order(model):
    family = family_of()
    plan = step_plan(StepSubsetConfig(mode="window", window=4), 12, 0, 0)  # steps 0-3 sampled, the rest greedy
    a = family.sample(model, PROMPTS, HandSchedule(family.hand_schedule(12)), plan, seed=0)
    b = family.sample(model, PROMPTS, HandSchedule(family.hand_schedule(12)), plan, seed=1)
    commit_step, token_logp = a.tensors["commit_step"], a.tensors["token_logp"]
    assert torch.equal(commit_step // 4, (torch.arange(24) // 8).expand_as(commit_step))
    assert (token_logp[commit_step >= 4] == 0).all() and (token_logp[commit_step < 4] < 0).all()
    assert not torch.equal(a.tensors["tokens"][:, :8], b.tensors["tokens"][:, :8])  # the sampled block
