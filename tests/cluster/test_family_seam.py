"""The family seam, proved by a family the package does not have: a Gaussian bandit plugged in by name
(tests/toy_family.py) trains through the single-process and the Ray runtime, with the learner and runtimes as
they are; theta's means move toward the closed-form optimum and phi learns to draw with less noise."""

import pytest

from cogrpo.cli import main
from cogrpo.proto.config import load_config
from cogrpo.proto.errors import InputError

FAMILY = ["model.family=tests.toy_family:GaussianBandit", "model.kind=null", "model.checkpoint=null"]
TOY = [*FAMILY, "model.options={target: 1.0}",
       "rewards=[{kind: plugin, target: 'tests.toy_family:Distance', options: {target: 1.0}}]",
       "schedule_policy.learn=null", "sampler.steps=3", "sampler.batch_size=16", "algo.group_size=8",
       "algo.prompts_per_iteration=4",
       "algo.alternate_every=4", "algo.lr=0.2", "algo.kl_beta=0", "algo.ema_decay=0",
       "schedule_policy.lr=0.05", "train.iterations=24", "train.eval_every=24", "train.checkpoint_every=24",
       "train.eval_steps=[3]", "train.eval_at_start=true"]


def toy(eval_file, *overrides):
    return load_config("configs/smoke-cpu.yaml", [*TOY, f"train.eval_metadata={{heldout: {eval_file}}}",
                                                  *overrides])


@pytest.mark.parametrize("runtime", ["local", "ray"])
def test_a_family_of_ones_own_learns_in_both_runtimes(tmp_path, eval_file, fit_run, runtime):
    config = toy(eval_file, f"runtime={runtime}", "cluster.rollout_cpus=0.5", "cluster.learner_cpus=0.5")
    loop = fit_run(config, tmp_path / runtime)
    start, end = loop.run.evals[0], loop.run.evals[-1]
    assert end["distance"] < 0.6 * start["distance"], (start, end)  # theta's means moved toward the target
    assert end["reward/plugin_Distance"] > start["reward/plugin_Distance"]
    assert start["schedule"]["noise"] == [1.0, 1.0, 1.0]  # a fresh phi acts the hand schedule
    assert max(end["schedule"]["noise"]) < 0.9  # phi learned to draw with less noise
    assert (tmp_path / runtime / "checkpoints" / "iter_000024" / "model.safetensors").is_file()


def test_a_reward_of_the_other_kind_is_refused_when_the_config_loads(eval_file, capsys):
    with pytest.raises(InputError, match=r"rewards.0 \(shapes_strict\) scores images, but family "
                                         r"tests.toy_family:GaussianBandit makes vectors"):
        toy(eval_file, "rewards=[{kind: shapes}]")
    with pytest.raises(InputError, match="plugin module tests.toy_family has no Nowhere"):
        toy(eval_file, "model.family=tests.toy_family:Nowhere")
    assert main(["eval", "--config", "configs/smoke-cpu.yaml", *(a for item in FAMILY for a in ("--set", item))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "scores images, but family tests.toy_family:GaussianBandit makes vectors" in err
