import json

import pytest
import torch

from cogrpo.cluster.loop import trainer
from cogrpo.cluster.ray.actors import RolloutWorker
from cogrpo.learner.learner import Learner
from cogrpo.proto.config import load_config
from cogrpo.rollout.masked_image.family import hand_knobs

TIMING = {"rollout_s", "update_s", "iteration_s", "images_per_s", "seconds"}


def run(config, tmp_path, name):
    loop = trainer(config, str(tmp_path / name), log=lambda line: None)
    before = {k: v.clone() for k, v in loop.runtime.model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in loop.runtime.policy.state_dict().items()}
    loop.fit()
    return loop, before, policy_before


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_fixed_seeds_reproduce_the_run_exactly(tmp_path, tiny):
    config = tiny()
    a, _, _ = run(config, tmp_path, "a")
    b, _, _ = run(config, tmp_path, "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a.run.metrics) == strip(b.run.metrics)
    for (k, x), (_, y) in zip(a.runtime.model.state_dict().items(), b.runtime.model.state_dict().items()):
        assert torch.equal(x, y), k
    run_dir = tmp_path / "a"
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "reward_curve.png", "schedule.png",
                 "samples_iter_000002.png", "checkpoints/latest", "checkpoints/iter_000002/model.safetensors",
                 "checkpoints/iter_000002/schedule_policy.safetensors"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == config


def test_evaluations_score_every_image_with_the_runs_rewards(tmp_path, tiny):
    loop = trainer(tiny("train.iterations=1", "eval.n_per_prompt=3", "sampler.batch_size=4"), str(tmp_path / "run"),
                   log=lambda line: None)
    loop.fit()
    for row in loop.run.evals:  # 6 prompts x 3 images, in batches of 4; the shapes rewards judge as GenEval's does
        assert row["images"] == 18
        assert row["reward/shapes_strict"] == row["strict"]
        assert row["reward/shapes_partial"] == pytest.approx(row["partial"]) and row["partial"] > 0
        assert row["reward_std/shapes_partial"] > 0


@pytest.mark.parametrize("mode, update, phases", [
    ("grpo", "alternating", [(True, False), (True, False)]),
    ("schedule_only", "alternating", [(False, True), (False, True)]),
    ("cogrpo", "alternating", [(True, False), (False, True)]),  # alternate_every=1, theta first
    ("cogrpo", "joint", [(True, True), (True, True)]),
])
def test_each_mode_trains_only_its_policies(tmp_path, tiny, mode, update, phases):
    config = tiny(f"algo.mode={mode}", f"algo.update={update}")
    loop, model_before, policy_before = run(config, tmp_path, f"{mode}-{update}")
    assert [(m["train_theta"], m["train_phi"]) for m in loop.run.metrics] == phases
    assert changed(model_before, loop.runtime.model) == any(t for t, _ in phases)
    assert changed(policy_before, loop.runtime.policy) == any(p for _, p in phases)


@pytest.mark.parametrize("outside", ["deterministic", "stochastic"])
def test_a_flash_window_trains_its_window_and_decodes_fewer_steps_after_it(tmp_path, tiny, monkeypatch, outside):
    """Six steps, a window of two moved every iteration, flash ratio 1/2: iteration 0 trains steps 0, 1 and decodes
    2 and 5 after them (half of 2..5, ending on the last); iteration 1 trains 1, 2 and decodes 3 and 5. Steps
    outside the window are greedy, or sampled but untrained."""
    seen = []
    update = Learner.update

    def spy(learner, batch, iteration, stale=False):
        traj = batch.traj
        trained = [int(traj.step_index[t]) for t in range(traj.steps)
                   if batch.trained[:, t].any() and traj.stochastic[t]]
        seen.append((traj.step_index.tolist(), traj.stochastic.tolist(), trained))
        return update(learner, batch, iteration, stale)

    monkeypatch.setattr(Learner, "update", spy)
    window = tiny("sampler.steps=6", "algo.steps.mode=window", "algo.steps.window=2", "algo.steps.shift_every=1",
                  "algo.steps.flash_ratio=0.5", f"algo.steps.outside={outside}")
    run(window, tmp_path, "window")
    sampled = [[True] * 4, [True] * 5] if outside == "stochastic" else \
        [[True, True, False, False], [False, True, True, False, False]]
    assert seen == [([0, 1, 2, 5], sampled[0], [0, 1]), ([0, 1, 2, 3, 5], sampled[1], [1, 2])]


def test_maskgrpo_trains_theta(tmp_path, tiny):
    maskgrpo = tiny("algo.mode=grpo", "algo.theta_likelihood=maskgrpo", "sampler.kind=emerge",
                    "algo.inner_epochs=2")
    loop, before, _ = run(maskgrpo, tmp_path, "maskgrpo")
    assert changed(before, loop.runtime.model)
    rows = [json.loads(line) for line in (tmp_path / "maskgrpo" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_theta" in r for r in rows)


def test_down_sampling_rolls_out_more_and_trains_on_group_size_per_prompt(tmp_path, tiny):
    loop, before, _ = run(tiny("algo.mode=grpo", "algo.rollouts_per_prompt=6"), tmp_path, "pods")
    for row in loop.run.metrics:
        assert row["images"] == 2 * 6  # every rollout is scored and counted in the rewards
        assert row["usable"] == 2 * 4  # the update sees group_size of each prompt's six
    assert changed(before, loop.runtime.model)


def test_dynamic_sampling_rolls_out_candidate_prompts_and_trains_on_prompts_per_iteration(tmp_path, tiny):
    loop, before, _ = run(tiny("algo.candidate_prompts=3"), tmp_path, "dynamic")
    for row in loop.run.metrics:
        assert row["images"] == 3 * 4  # three prompts rolled out and scored
        assert row["usable"] == 2 * 4  # two of them trained
        assert row["dropped_groups"] == 0  # the prompt left out is not a fault
    assert changed(before, loop.runtime.model)


@pytest.mark.parametrize("frozen_schedule", ["sampled", "mean"])
def test_rollouts_act_a_frozen_schedule_as_configured_in_both_runtimes(tmp_path, tiny, frozen_schedule):
    """alternate_every=1, theta first: iteration 0 trains theta alone, iteration 1 phi. A fresh phi's mean action
    is the hand schedule, so a rollout decoded with it carries the hand knobs (to rounding)."""
    config = tiny(f"algo.frozen_schedule={frozen_schedule}")
    local = trainer(config, str(tmp_path / "run"), log=lambda line: None)
    remote = RolloutWorker(config)
    remote.version = 0  # the shipped weights, as the driver's first broadcast would leave them
    hand = hand_knobs(config.sampler, config.sampler.steps)
    for iteration, samples_actions in ((0, frozen_schedule == "sampled"), (1, True)):
        records, plan = local.inputs(iteration)
        traj = local.runtime.rollout(iteration, records, plan).handle.traj
        prompts = [r["prompt"] for r in records for _ in range(config.algo.samples_per_prompt)]
        remote_traj, _, _ = remote.generate(prompts[:config.sampler.batch_size], plan, 0, iteration, 0)
        for knobs in (traj.knobs, remote_traj.knobs):
            assert torch.allclose(knobs, hand.expand_as(knobs), atol=1e-6) != samples_actions
