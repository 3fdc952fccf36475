"""The Ray runtime's driver: rollout workers, reward workers and a DeepSpeed learner group as Ray actors, driven by
the shared training loop. The driver moves object references and small arrays (scores, advantages), never the
trajectories or weights themselves.

Per iteration: rollout batches (the same batches and seeds as the single-process runtime) go to the rollout pool;
each batch's samples go straight to a reward worker; the loop turns the scores into group advantages; every
learner rank takes the trajectories from the object store and trains its share of each minibatch; the weight
channel publishes the new weights (model and schedule policy, one versioned message), which rollout workers swap in
between batches.
An evaluation is decoded by rollout worker 0 (theta's moving average, if kept, swapped in) and its sample batches
are scored by the reward workers as a rollout's are. Faults are the actor pools' business (cluster/ray/pool.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray

from cogrpo.cluster.build import family_of
from cogrpo.cluster.loop import EvalResult, Rollout
from cogrpo.cluster.ray.actors import RewardWorker, RolloutWorker, reports_input_errors
from cogrpo.cluster.ray.connect import check_resources, connect
from cogrpo.cluster.ray.learner import LearnerWorker, rank_metrics
from cogrpo.cluster.ray.pool import RESTARTED, REWARD, ROLLOUT, ActorPool, from_learners, get
from cogrpo.cluster.ray.weights import WeightChannel
from cogrpo.proto.config import Config
from cogrpo.rewards.registry import Terms, join_batches
from cogrpo.rollout.batching import repeat_each, slices
from cogrpo.rollout.steps import StepPlan


@dataclass
class Batch:
    """One batch in flight, with what it takes to issue its calls again after a fault: the same prompts, seed and
    workers give the same samples."""

    index: int  # within the iteration: picks the workers
    iteration: int | None  # None: a batch of evaluation samples, scored but never generated again
    plan: StepPlan | None
    prompts: list[str]
    metadata: list[dict]
    seed: int
    traj: ray.ObjectRef | None = None
    samples: ray.ObjectRef | None = None
    version_ref: ray.ObjectRef | None = None
    version: int | None = None  # the weight version that made it, once generated
    scores: list = field(default_factory=list)  # a ref per reward term
    settled: list | None = None  # (scores, valid) per reward term, once settled


class RayRuntime:
    def __init__(self, config: Config, log: Callable[[str], None] = print):
        self.config, self.log = config, log
        self.family = family_of(config)  # the loop reads its knobs; the models live in the actors

    def start(self) -> None:
        config, c = self.config, self.config.cluster
        connect(config)
        check_resources(config)
        rollout = ray.remote(reports_input_errors(RolloutWorker)).options(
            num_cpus=c.rollout_cpus, num_gpus=c.rollout_gpus, resources=dict(c.rollout_resources),
            max_restarts=c.max_restarts)
        reward = ray.remote(reports_input_errors(RewardWorker)).options(
            num_cpus=c.reward_cpus, num_gpus=c.reward_gpus, resources=dict(c.reward_resources),
            runtime_env=c.reward_runtime_env or None, max_restarts=c.max_restarts)
        learner = ray.remote(reports_input_errors(LearnerWorker)).options(
            num_cpus=c.learner_cpus, num_gpus=c.learner_gpus, resources=dict(c.learner_resources))
        self.timeout = c.timeout_s
        self.rollouts = ActorPool(ROLLOUT, [rollout.remote(config) for _ in range(c.rollout_workers)], c.timeout_s,
                                  c.max_restarts, self.log)
        self.rewards = ActorPool(REWARD, [reward.remote(config) for _ in range(c.reward_workers)], c.timeout_s,
                                 c.max_restarts, self.log)
        self.learners = [learner.remote(config, rank, c.learner_ranks) for rank in range(c.learner_ranks)]
        self.version = 0
        self.in_flight: list[Rollout] = []  # launched rollouts whose scores the loop has not taken yet
        self.average: tuple[int, list | None] | None = None  # (weight version, [ref] to theta's average at it)
        get([a.ready.remote() for a in [*self.rollouts.actors, *self.rewards.actors, *self.learners]], self.timeout)
        self.rollouts.started()
        self.rewards.started()
        master = get(self.learners[0].rendezvous.remote(), self.timeout)
        get([w.setup.remote(*master) for w in self.learners], self.timeout)
        self.weights = WeightChannel(self.learners, self.rollouts, c.weight_sync, c.timeout_s, self.log)
        self.weights.connect()

    # ---- rollouts and their scores ----
    def rollout(self, iteration: int, records: list[dict], plan: StepPlan) -> Rollout[list[Batch]]:
        metadata = repeat_each(records, self.config.algo.samples_per_prompt)
        batches = self._batches(metadata, iteration, plan)
        for batch in batches:
            self._issue(batch)
        rollout = Rollout(iteration, records, plan, len(metadata), batches)
        self.in_flight.append(rollout)
        return rollout

    def _batches(self, metadata: list[dict], iteration: int | None, plan: StepPlan | None) -> list[Batch]:
        """The samples of `metadata` (one record each) in batches of sampler.batch_size, as workers take them."""
        return [Batch(s.index, iteration, plan, [r["prompt"] for r in metadata[s.start: s.stop]],
                      metadata[s.start: s.stop], s.seed)
                for s in slices(len(metadata), self.config.sampler.batch_size, self.config.seed, iteration)]

    def _issue(self, batch: Batch) -> ray.ObjectRef:
        """Submit (again) a batch's generation and every reward term's scoring of its samples: each sample
        reference goes straight from rollout to reward. Returns the reference to the version that made it."""
        worker = self.rollouts[self.rollouts.slot(batch.index)]
        batch.traj, batch.samples, batch.version_ref = worker.generate.options(num_returns=3).remote(
            batch.prompts, batch.plan, batch.seed, batch.iteration, self.version)
        batch.scores = [self._score(batch, term) for term in range(len(self.config.rewards))]
        return batch.version_ref

    def _score(self, batch: Batch, term: int) -> ray.ObjectRef:
        scorer = self.rewards[self.rewards.slot(batch.index)]
        return scorer.score.remote(term, batch.samples, batch.prompts, batch.metadata)

    def score(self, rollout: Rollout[list[Batch]]) -> Terms:
        per_batch = [self._settle(batch) for batch in rollout.handle]
        if rollout in self.in_flight:
            self.in_flight.remove(rollout)
        return join_batches(per_batch, [reward.weight for reward in self.config.rewards])

    def _settle(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """A batch's generation, then its scores per term (once; later calls return them). Batches are settled in
        the order their calls were issued, so every earlier call on the same reward worker has ended when a term's
        wait starts, and its timeout measures that call alone."""
        if batch.version is None:
            batch.version = self.rollouts.result(self.rollouts.slot(batch.index), batch.version_ref,
                                                 lambda: self._issue(batch))
        if batch.settled is None:
            batch.settled = [self._settle_score(batch, term) for term in range(len(self.config.rewards))]
        return batch.settled

    def _settle_score(self, batch: Batch, term: int) -> tuple[np.ndarray, np.ndarray]:
        """One term's (scores, valid) for a batch; a batch a reward could not score stays unscored by it (invalid
        samples, counted in reward_failures)."""
        c, name = self.config.cluster, self.config.rewards[term].name
        where = "an evaluation batch" if batch.iteration is None else f"a batch of iteration {batch.iteration + 1}"

        def again() -> ray.ObjectRef:
            batch.scores[term] = self._score(batch, term)
            return batch.scores[term]

        result = self.rewards.result_or_none(self.rewards.slot(batch.index), batch.scores[term], again,
                                             c.reward_timeout_s, c.reward_retries, name,
                                             f"reward {name} failed on {where}")
        if result is None:
            return np.full(len(batch.prompts), np.nan), np.zeros(len(batch.prompts), dtype=bool)
        return result

    # ---- the learner and its weights ----
    def update(self, iteration: int, rollout: Rollout[list[Batch]], advantages: np.ndarray,
               usable: np.ndarray) -> dict:
        batches = rollout.handle
        parts, sizes = [b.traj for b in batches], [len(b.prompts) for b in batches]
        versions = [b.version for b in batches]
        metrics = rank_metrics(from_learners([w.update.remote(iteration, parts, sizes, versions, advantages, usable,
                                                              rollout.plan) for w in self.learners], self.timeout))
        self.version = metrics["weight_version"]
        return metrics

    def publish(self) -> dict:
        return {"sync_s": round(self.weights.publish(self.version), 4)}

    # ---- evaluation ----
    def evaluate(self, records: list[dict], steps: int) -> EvalResult:
        """Rollout worker 0 decodes; its sample batches go straight to the reward workers and are scored (with
        their timeouts and retries) as rollout batches are."""
        for rollout in self.in_flight:  # one step off: their scoring calls are queued first
            for batch in rollout.handle:
                self._settle(batch)
        batches = self._batches(repeat_each(records, self.config.eval.n_per_prompt), None, None)
        (summary, rows, knobs, preview), refs = self._evaluate_on_worker(records, steps, len(batches))
        for batch, samples in zip(batches, refs, strict=True):
            batch.samples, batch.version = samples, self.version  # made: never issued again
            batch.scores = [self._score(batch, term) for term in range(len(self.config.rewards))]
        terms = join_batches([self._settle(batch) for batch in batches], [r.weight for r in self.config.rewards])
        return EvalResult(summary, rows, preview, terms, knobs)

    def _evaluate_on_worker(self, records: list[dict], steps: int, batches: int):
        """(rollout worker 0's first return, references to its `batches` sample batches): objects the driver owns,
        which outlive the worker. Issued again if the worker restarted."""
        while True:
            refs = self.rollouts[0].evaluate.options(num_returns=1 + batches).remote(
                records, steps, self._average_ref(), self.version)
            try:
                return get(refs[0], self.timeout), refs[1:]
            except RESTARTED:
                self.rollouts.recover(0)

    def _average_ref(self) -> list | None:
        """[ref] to theta's moving average for evaluations (None: evaluate the live weights). Learner rank 0 puts it
        in the object store once per weight version, not once per split and step count evaluated."""
        if not self.config.algo.ema_decay:
            return None
        if self.average is None or self.average[0] != self.version:
            self.average = (self.version, from_learners(self.learners[0].average_weights.remote(), self.timeout))
        return self.average[1]

    # ---- checkpoints, fault counts, shutdown ----
    def save(self, folder: Path) -> None:
        from_learners([w.save_checkpoint.remote(str(folder)) for w in self.learners], self.timeout)

    def load(self, folder: Path, state: dict) -> None:
        self.version = state["weight_version"]
        from_learners([w.load_checkpoint.remote(str(folder), self.version) for w in self.learners], self.timeout)

    def state(self) -> dict:
        return {"weight_version": self.version}

    def fault_counts(self) -> dict:
        """This iteration's counts, then reset: rows hold counts per iteration, not running totals."""
        rollout_restarts, _ = self.rollouts.take_counts()
        reward_restarts, timeouts = self.rewards.take_counts()
        return {"actor_restarts": {ROLLOUT: rollout_restarts, REWARD: reward_restarts},
                "reward_timeouts": {r.name: timeouts.get(r.name, 0) for r in self.config.rewards}}

    def close(self) -> None:
        """End this run's actors (the Ray session stays up for the next run in this process)."""
        for actor in [*self.rollouts.actors, *self.rewards.actors, *self.learners]:
            ray.kill(actor)
