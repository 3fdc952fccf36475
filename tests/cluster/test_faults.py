"""Faults: killed rollout workers restart and their batches are issued again with the same seeds (same samples as
an undisturbed run); hung rewards time out, are retried, then left unscored; NaN scores are masked and thin groups
dropped; a dead learner ends the run naming the last checkpoint."""

import os
import signal
import threading

import numpy as np
import pytest

from cogrpo.cli import COMMANDS, main
from cogrpo.cluster.loop import TrainingLoop, trainer
from cogrpo.data.prompts import training_records
from cogrpo.proto.errors import FaultError
from cogrpo.rewards.shapes import ShapesReward

RAY = ["runtime=ray", "sampler.batch_size=4", "train.eval_at_start=false", "cluster.rollout_cpus=0.5",
       "cluster.learner_cpus=0.5", "cluster.timeout_s=60"]


@pytest.fixture
def ray_runtime():
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from cogrpo.cluster.ray.driver import RayRuntime

    yield RayRuntime
    ray.shutdown()


def run_on(runtime_class, config, path, log=lambda line: None) -> TrainingLoop:
    """The loop over a runtime of the test's own (a RayRuntime that injects faults)."""
    return TrainingLoop(config, runtime_class(config, log), str(path), log)


def kill(actor) -> None:
    """SIGKILL an actor's process, as the OOM killer or a crash would."""
    import ray

    os.kill(ray.get(actor.incarnation.remote())[1], signal.SIGKILL)


def test_killed_rollout_workers_restart_and_their_batches_come_out_the_same(tmp_path, tiny, ray_runtime):
    class KillsRolloutWorkers(ray_runtime):
        """Kills worker 1 just before the weight broadcast after the first update, worker 0 while it generates
        the last iteration's first batch, and worker 0 again once it has made the final evaluation's images,
        before any of them is scored."""

        def publish(self):
            if self.version == 1:
                kill(self.rollouts[1])
            return super().publish()

        def rollout(self, iteration, records, plan):
            launched = super().rollout(iteration, records, plan)
            if iteration == 2:
                kill(self.rollouts[0])
            return launched

        def _score(self, batch, term):
            if batch.iteration is None and batch.index == 0 and term == 0:
                kill(self.rollouts[0])
            return super()._score(batch, term)

    config = tiny(*RAY, "train.iterations=3", "cluster.rollout_workers=2", "algo.update=joint")
    lines = []
    faulty = run_on(KillsRolloutWorkers, config, tmp_path / "ray", lines.append)
    faulty.fit()
    restarts = [line.split(" (")[0] for line in lines if " restarted (process" in line]
    # the third kill, once the final evaluation's samples exist, costs the run nothing: they are scored from
    # objects the driver owns, and nothing asks that worker for more
    assert restarts == ["rollout worker 1 restarted", "rollout worker 0 restarted"]
    local = trainer(config.model_copy(update={"runtime": "local"}), str(tmp_path / "local"), log=lambda line: None)
    local.fit()
    rows = faulty.run.metrics
    assert [r["actor_restarts"] for r in rows] == [{"rollout": 1, "reward": 0}, {"rollout": 0, "reward": 0},
                                                   {"rollout": 1, "reward": 0}]
    assert faulty.runtime.weights.transport == "object_store"  # a new process cannot join the broadcast group
    for ray_row, local_row in zip(rows, local.run.metrics):
        assert ray_row["usable"] == ray_row["images"] == 8 and ray_row["dropped_groups"] == 0
        for key in ("reward/shapes_strict", "reward/shapes_partial", "adv_std"):  # the same samples
            assert ray_row[key] == local_row[key], key
        assert ray_row["loss_theta"] == pytest.approx(local_row["loss_theta"], abs=1e-5)
    [ray_eval], [local_eval] = faulty.run.evals, local.run.evals  # the images outlived the worker that made them
    for key in ("overall", "reward/shapes_strict", "reward/shapes_partial"):
        assert ray_eval[key] == local_eval[key], key


class StallingJudge:
    """Scores every image 5, except that it stalls (until released), then drops, the first request for one
    prompt and every request for another."""

    def __init__(self, stall_once: str, stall_always: str):
        self.stall_once, self.stall_always = stall_once, stall_always
        self.release, self.lock, self.stalled_once = threading.Event(), threading.Lock(), False

    def __call__(self, body: dict):
        text = body["messages"][0]["content"][0]["text"]
        with self.lock:
            stall = self.stall_always in text or (self.stall_once in text and not self.stalled_once)
            self.stalled_once |= self.stall_once in text
        if stall:
            self.release.wait(120)
            return None
        return "5"


def test_hung_reward_calls_time_out_are_retried_then_left_unscored(tmp_path, tiny, ray_runtime, chat_server):
    first, second = (r["prompt"] for r in training_records(0, 0, 2))
    stalling = StallingJudge(stall_once=first, stall_always=second)
    judge = chat_server(stalling)
    try:
        config = tiny(*RAY, "train.iterations=1", "cluster.reward_timeout_s=2", "cluster.reward_retries=1",
                      "cluster.max_restarts=5", "algo.mode=schedule_only",
                      f"rewards=[{{kind: vlm_judge, judge: {{base_url: '{judge.url}', model: judge, retries: 0}}}}]")
        loop = run_on(ray_runtime, config, tmp_path / "run")
        loop.fit()
    finally:
        stalling.release.set()
    row = loop.run.metrics[0]
    # the first group's call hung once, then scored; the second's hung on both attempts and stays unscored
    assert row["reward_timeouts"] == {"vlm_judge_judge": 3}
    assert row["actor_restarts"] == {"rollout": 0, "reward": 3}  # a hung worker is freed by a restart
    assert row["reward_failures"] == {"vlm_judge_judge": 4}
    assert row["dropped_groups"] == 1 and row["usable"] == 4 and row["reward/vlm_judge_judge"] == 5.0
    assert loop.run.evals[0]["reward/vlm_judge_judge"] == 5.0  # the judge scores the held-out images too


def test_nan_scores_are_masked_and_a_group_left_with_one_sample_is_dropped(tmp_path, tiny, monkeypatch):
    score = ShapesReward.score

    def first_three_nan(self, images, prompts, metadata):
        scores, valid = score(self, images, prompts, metadata)
        return np.where(np.arange(len(scores)) < 3, np.nan, scores), valid

    monkeypatch.setattr(ShapesReward, "score", first_three_nan)
    lines = []
    loop = trainer(tiny("train.iterations=1", "algo.mode=schedule_only", "train.eval_at_start=false"),
                   str(tmp_path / "run"), log=lines.append)
    loop.fit()
    row = loop.run.metrics[0]
    assert row["reward_failures"] == {"shapes_strict": 3, "shapes_partial": 3}
    assert row["dropped_groups"] == 1 and row["usable"] == 4
    assert np.isfinite(row["reward/shapes_strict"]) and np.isfinite(row["loss_phi"])
    assert any("1 of 2 prompt groups dropped" in line for line in lines)


def test_a_dead_learner_ends_the_run_naming_the_last_checkpoint(tmp_path, tiny, ray_runtime):
    class KillsItsLearner(ray_runtime):
        def save(self, folder):
            super().save(folder)
            if "iter_000001" in str(folder):
                kill(self.learners[0])

    config = tiny(*RAY, "train.checkpoint_every=1")
    loop = run_on(KillsItsLearner, config, tmp_path / "run")
    with pytest.raises(FaultError, match=r"a learner died .*last complete checkpoint is .*iter_000001: continue "
                                         r"with --resume auto"):
        loop.fit()


def test_a_fault_exits_1_with_one_line(monkeypatch, capsys):
    def fails(args):
        raise FaultError("a learner died; the last complete checkpoint is runs/x/checkpoints/iter_000003")

    monkeypatch.setitem(COMMANDS, "train", fails)
    assert main(["train"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "iter_000003" in err
