"""The simulated cluster at CI scale: 4 simulated rollout GPUs (2 workers of 2) on Ray train a few iterations of the
real loop, with waits in place of the model's passes. The weight version advances, rows and Prometheus metrics are
written, and the run's time goes to the waits, not to the CPU."""

import os
import urllib.request

import psutil
import pytest
import ray

from cogrpo.cluster.loop import trainer
from cogrpo.proto.config import load_config
from cogrpo.proto.errors import InputError

ROLLOUT_S, LEARNER_S, REWARD_S = 0.02, 0.004, 0.01  # per image-step, per trained sample-step, per image
SIMULATE = (f"simulate={{rollout_s_per_image_step: {ROLLOUT_S}, learner_s_per_sample_step: {LEARNER_S}, "
            f"reward_s_per_image: {REWARD_S}, gpus_per_rollout_worker: 2, weights_mb: 8}}")
RUN = ["runtime=ray", SIMULATE, "threads=1", "cluster.rollout_workers=2", "cluster.rollout_cpus=0.25",
       "cluster.reward_cpus=0.1", "cluster.learner_cpus=0.5", "cluster.weight_sync=object_store", "metrics.port=0",
       "sampler.steps=8", "sampler.batch_size=8", "algo.prompts_per_iteration=4", "algo.group_size=8",
       "algo.update=joint", "algo.kl_beta=0", "algo.ema_decay=0", "train.iterations=3", "train.eval_at_start=false",
       "train.eval_metadata={}"]


def cpu_seconds(process: psutil.Process) -> float:
    """User and system CPU seconds of a process and its descendants (the embedded cluster and its workers)."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


def test_a_simulated_cluster_trains_on_waits(tmp_path):
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    config = load_config("configs/smoke-cpu.yaml", RUN)
    loop = trainer(config, str(tmp_path / "run"), log=lambda line: None)
    me = psutil.Process()
    try:
        before = cpu_seconds(me)
        rows = [loop.iterate(iteration) for iteration in range(3)]
        cpu = cpu_seconds(me) - before
        scraped = urllib.request.urlopen(loop.metrics.url, timeout=5).read().decode()
    finally:
        loop.close()
        ray.shutdown()
    assert [row["weight_version"] for row in rows] == [1, 2, 3]
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3
    assert "cogrpo_weight_version 3.0" in scraped and "cogrpo_weight_sync_seconds_count 3.0" in scraped
    images, steps = 32, 8
    rollout_wait = images * steps * ROLLOUT_S / 4  # 4 simulated GPUs
    for row in rows:
        assert row["images"] == images and row["rollout_s"] >= rollout_wait
        assert 0 < row["adv_std"] and row["usable"] == images  # drawn rewards vary within most groups
    waits = 3 * (rollout_wait + images * steps * LEARNER_S + images * REWARD_S * len(config.rewards))
    wall = sum(row["iteration_s"] for row in rows)
    assert waits > 0.5 * wall, (waits, wall)  # the iterations' time is mostly the simulated passes
    assert cpu < wall, (cpu, wall)  # and every process of the run together kept under one core busy


def test_a_simulated_run_replays_log_probs():
    with pytest.raises(InputError, match="simulate: a simulated run replays log-probs"):
        load_config("configs/flow-smoke-cpu.yaml", [SIMULATE, "algo.theta_objective=nft", "algo.mode=grpo",
                                                    "algo.steps.mode=none"])
    with pytest.raises(InputError, match="simulate.weights_mb"):
        load_config("configs/smoke-cpu.yaml", ["simulate={weights_mb: 0}"])
