import json

import pytest
import torch

from cogrpo.cluster.local import LocalTrainer
from cogrpo.data.geneval import write_jsonl
from cogrpo.data.prompts import builtin_metadata
from cogrpo.proto.config import load_config

TIMING = {"rollout_s", "update_s", "iteration_s", "images_per_s", "seconds"}


@pytest.fixture(scope="module")
def eval_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "eval.jsonl"
    write_jsonl(path, builtin_metadata("heldout")[:6])
    return path


def tiny(eval_file, *overrides):
    return load_config("configs/smoke-cpu.yaml", [
        "train.iterations=2", "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.steps=4",
        "train.eval_steps=[4]", f"train.eval_metadata={{heldout: {eval_file}}}", "algo.alternate_every=1",
        "sampler.batch_size=8", *overrides])


def run(config, tmp_path, name):
    trainer = LocalTrainer(config, str(tmp_path / name), log=lambda line: None)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    policy_before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train()
    return trainer, before, policy_before


def changed(before, module):
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_fixed_seeds_reproduce_the_run_exactly(tmp_path, eval_file):
    config = tiny(eval_file)
    a, _, _ = run(config, tmp_path, "a")
    b, _, _ = run(config, tmp_path, "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a.run.metrics) == strip(b.run.metrics)
    for (k, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), k
    run_dir = tmp_path / "a"
    for name in ("config.yaml", "metrics.jsonl", "eval.jsonl", "reward_curve.png", "schedule.png",
                 "samples_iter_000002.png", "checkpoints/latest", "checkpoints/iter_000002/model.safetensors",
                 "checkpoints/iter_000002/schedule_policy.safetensors"):
        assert (run_dir / name).is_file(), name
    assert load_config(run_dir / "config.yaml") == config


@pytest.mark.parametrize("mode, theta, phi", [("grpo", True, False), ("schedule_only", False, True),
                                              ("cogrpo", True, True)])
def test_each_mode_trains_only_its_policies(tmp_path, eval_file, mode, theta, phi):
    trainer, model_before, policy_before = run(tiny(eval_file, f"algo.mode={mode}"), tmp_path, mode)
    assert changed(model_before, trainer.model) == theta
    assert changed(policy_before, trainer.policy) == phi
    phases = [(m["train_theta"], m["train_phi"]) for m in trainer.run.metrics]
    if mode == "cogrpo":  # alternating every iteration, theta first
        assert phases == [(True, False), (False, True)]


def test_window_flash_and_maskgrpo_variants_run(tmp_path, eval_file):
    window = tiny(eval_file, "algo.steps.mode=window", "algo.steps.window=2", "algo.steps.flash_ratio=0.5")
    run(window, tmp_path, "window")
    maskgrpo = tiny(eval_file, "algo.mode=grpo", "algo.theta_likelihood=maskgrpo", "sampler.kind=emerge",
                    "algo.inner_epochs=2")
    trainer, before, _ = run(maskgrpo, tmp_path, "maskgrpo")
    assert changed(before, trainer.model)
    rows = [json.loads(line) for line in (tmp_path / "maskgrpo" / "metrics.jsonl").read_text().splitlines()]
    assert all("loss_theta" in r for r in rows)
