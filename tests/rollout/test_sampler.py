import copy
import math

import pytest
import torch

from cogrpo.models.tiny_mdm import TinyMDM
from cogrpo.proto.config import SamplerConfig, TinyArch
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.masked.estimators import committed_at
from cogrpo.rollout.masked_image.family import KNOB_NAMES, hand_knobs
from cogrpo.rollout.masked.sampler import canvas_before, generate, replay_log_probs
from cogrpo.rollout.schedule import HandSchedule

PROMPTS = ["a photo of a red circle", "a photo of three squares", "a photo of a blue square left of a red circle",
           "a photo of a circle and a triangle"] * 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyMDM(TinyArch(d_model=32, layers=2, heads=2, conv_layers=1)).eval()


def run(model, seed=0, sampler="maskgit", steps=6, **knobs):
    table = hand_knobs(SamplerConfig(**knobs), steps)
    return generate(model, model.encode_prompts(PROMPTS), HandSchedule(table), steps, seed, sampler)


def assert_same(a: Trajectory, b: Trajectory):
    for name in ("tokens", "commit_step", "token_logp"):
        assert torch.equal(a.tensors[name], b.tensors[name]), name
    assert torch.equal(a.knobs, b.knobs)


@pytest.mark.parametrize("sampler", ["maskgit", "emerge"])
def test_deterministic_for_a_seed_and_different_across_seeds(model, sampler):
    assert_same(run(model, 3, sampler), run(model, 3, sampler))
    assert not torch.equal(run(model, 3, sampler).tensors["tokens"], run(model, 4, sampler).tensors["tokens"])


@pytest.mark.parametrize("sampler", ["maskgit", "emerge"])
@pytest.mark.parametrize("guidance", [0.0, 2.0])
@pytest.mark.parametrize("device, dtype, atol", [
    pytest.param("cpu", torch.float32, 1e-5, id="cpu"),
    # a GPU rollout worker's bf16 model; the replay batches differently, so bf16 rounding differs a little
    pytest.param("cuda", torch.bfloat16, 0.05, id="cuda-bf16", marks=pytest.mark.cuda),
])
def test_replay_reproduces_the_recorded_log_probs(model, sampler, guidance, device, dtype, atol):
    model = copy.deepcopy(model).to(device, dtype)
    traj = run(model, 1, sampler, guidance=guidance, temperature=0.8)
    assert traj.tensors["token_logp"].device.type == "cpu"
    steps = list(range(traj.steps))
    logp = replay_log_probs(model, traj, steps)
    replayed = (logp * committed_at(traj, steps)).sum(1)
    assert torch.allclose(replayed, traj.tensors["token_logp"], atol=atol)
    assert (traj.tensors["token_logp"] < 0).all()


def test_replay_of_selected_pairs_equals_the_full_replay_there(model):
    traj = run(model, 2, guidance=1.0)
    steps = [1, 2, 4]
    select = torch.rand(traj.batch_size, len(steps), generator=torch.Generator().manual_seed(0)) < 0.5
    full, part = replay_log_probs(model, traj, steps), replay_log_probs(model, traj, steps, select)
    assert torch.allclose(part[select], full[select], atol=1e-6) and (part[~select] == 0).all()


def test_every_position_is_committed_once_and_maskgit_follows_the_cosine_schedule(model):
    steps = 6
    traj = run(model, steps=steps)
    n = model.num_tokens
    tokens, commit_step = traj.tensors["tokens"], traj.tensors["commit_step"]
    assert (tokens != model.mask_id).all() and (commit_step < steps).all()
    masked_after = [int((commit_step[0] > t).sum()) for t in range(steps)]
    expected = [math.floor(n * math.cos(math.pi / 2 * (t + 1) / steps)) for t in range(steps)]
    assert masked_after == expected


def test_knobs_are_recorded_per_step_as_the_hand_schedule(model):
    traj = run(model, steps=5, remask_temperature=3.0, guidance=1.5)
    table = hand_knobs(SamplerConfig(remask_temperature=3.0, guidance=1.5), 5)
    assert torch.equal(traj.knobs[0], table)
    assert table[0, KNOB_NAMES.index("remask_temperature")] == 3.0
    assert table[-1, KNOB_NAMES.index("remask_temperature")] > 0
    assert torch.allclose(table[:, KNOB_NAMES.index("guidance")], torch.tensor(1.5))


def test_greedy_steps_are_deterministic_and_carry_no_log_prob(model):
    steps = 4
    stochastic = torch.tensor([True, True, False, False])
    cond = model.encode_prompts(PROMPTS)
    schedule = HandSchedule(hand_knobs(SamplerConfig(), steps))
    a = generate(model, cond, schedule, steps, 0, stochastic=stochastic)
    greedy_positions = a.tensors["commit_step"] >= 2
    token_logp = a.tensors["token_logp"]
    assert (token_logp[greedy_positions] == 0).all() and (token_logp[~greedy_positions] < 0).all()
    all_greedy = torch.zeros(steps, dtype=torch.bool)
    assert torch.equal(generate(model, cond, schedule, steps, 0, stochastic=all_greedy).tensors["tokens"],
                       generate(model, cond, schedule, steps, 99, stochastic=all_greedy).tensors["tokens"])


def test_select_and_cat_rebuild_the_batch(model):
    traj = run(model)
    halves = [traj.select(torch.arange(0, 4)), traj.select(torch.arange(4, 8))]
    assert_same(Trajectory.cat(halves), traj)
    assert torch.equal(canvas_before(traj, 0, model.mask_id), torch.full_like(traj.tensors["tokens"], model.mask_id))
    assert torch.equal(canvas_before(traj, traj.steps, model.mask_id), traj.tensors["tokens"])
