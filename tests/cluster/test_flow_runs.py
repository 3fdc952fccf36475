"""The flow family trains through both runtimes with the learner and runtimes as they are: the shipped TinyFlow
under MixGRPO's window (configs/flow-smoke-cpu.yaml, shortened) gives the same rewards, losses and evaluations in
one process and on an embedded Ray cluster, and its update moves theta."""

import pytest

from cogrpo.proto.config import load_config
from tests.conftest import fit_loop

SHORT = ["train.iterations=2", "algo.prompts_per_iteration=2", "algo.group_size=4", "sampler.steps=4",
         "eval.steps=4", "train.eval_steps=[4]", "sampler.batch_size=8", "algo.steps.window=2",
         "algo.steps.shift_every=1", "train.eval_at_start=false", "cluster.rollout_cpus=0.5",
         "cluster.learner_cpus=0.5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, eval_file):
    """The same short MixGRPO run in each runtime."""
    loops = {}
    for runtime in ("local", "ray"):
        config = load_config("configs/flow-smoke-cpu.yaml", [*SHORT, f"runtime={runtime}",
                                                             f"train.eval_metadata={{heldout: {eval_file}}}"])
        loops[runtime] = fit_loop(config, tmp_path_factory.mktemp(runtime))
    return loops


def test_mixgrpo_on_tinyflow_gives_the_same_run_in_both_runtimes(runs):
    local, ray = runs["local"].run, runs["ray"].run
    for a, b in zip(local.metrics, ray.metrics, strict=True):
        for key in ("reward/shapes_strict", "reward/shapes_partial", "adv_std", "usable"):
            assert a[key] == b[key], key
        for key in ("loss_theta", "kl_ref", "grad_norm_theta"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert local.evals[-1]["overall"] == ray.evals[-1]["overall"]


def test_the_update_trains_the_window_and_moves_theta(runs):
    rows = runs["local"].run.metrics
    assert all(row["train_theta"] and not row["train_phi"] for row in rows)  # MixGRPO: theta alone
    assert any(row["grad_norm_theta"] > 0 for row in rows)
    assert rows[-1]["weight_version"] == 2


def test_diffusion_nft_trains_tinyflow_on_all_ode_rollouts(tmp_path, eval_file):
    config = load_config("configs/flow-smoke-cpu.yaml", [*SHORT, "algo.theta_objective=nft", "algo.steps.mode=none",
                                                         f"train.eval_metadata={{heldout: {eval_file}}}"])
    rows = fit_loop(config, tmp_path).run.metrics
    assert all(row["grad_norm_theta"] > 0 and row["nft_positive"] > 0 for row in rows)
    assert rows[-1]["weight_version"] == 2
