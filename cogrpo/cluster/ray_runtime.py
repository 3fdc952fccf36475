"""The Ray runtime's driver: rollout workers, reward workers and a DeepSpeed learner group as Ray actors (their
code is cogrpo/cluster/actors.py), driven by the shared training loop. The driver moves object references and
small arrays (scores, advantages), never the trajectories or weights themselves.

Data flow per iteration: rollout batches (the same batches and seeds as the single-process trainer) go to the
rollout pool; each batch's images go straight to a reward worker; the driver turns the scores into group
advantages; every learner rank takes its shard of the trajectories from the object store and updates; learner
rank 0 publishes the new weights (model and schedule policy, one versioned message); rollout workers swap them in
between batches. With max_staleness 1 the next iteration's rollouts are launched before the update finishes.
An evaluation is decoded by rollout worker 0 (theta's moving average, if kept, swapped in) and its image batches
are scored by the reward workers as a rollout's are.

Faults: Ray restarts a dead rollout or reward worker (cluster.max_restarts); the driver waits for it, gives a
rollout worker the current weights, and issues the calls it lost again with the same inputs and seeds. A hung
reward call is ended by restarting its worker (cluster.reward_timeout_s), retried (cluster.reward_retries), then
left unscored. A dead learner ends the run with a FaultError naming the last checkpoint.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import ray._private.ray_constants as ray_constants

from cogrpo.cluster.actors import (REWARD, ROLLOUT, LearnerWorker, RewardWorker, RolloutWorker, WeightsMissing,
                                   reports_input_errors)
from cogrpo.cluster.trainer import Trainer
from cogrpo.proto.config import Config
from cogrpo.proto.errors import FaultError, InputError
from cogrpo.rewards.registry import join_batches
from cogrpo.rollout.collect import repeat_each, rollout_seed
from cogrpo.rollout.steps import StepPlan


def _check_resources(config: Config) -> None:
    """Fail at once with a clear message when the cluster cannot hold the requested actors (never hang pending)."""
    c = config.cluster
    need: dict[str, float] = {}
    for count, cpus, gpus, resources in ((c.rollout_workers, c.rollout_cpus, c.rollout_gpus, c.rollout_resources),
                                         (c.reward_workers, c.reward_cpus, c.reward_gpus, c.reward_resources),
                                         (c.learner_ranks, c.learner_cpus, c.learner_gpus, c.learner_resources)):
        for name, amount in {"CPU": cpus, "GPU": gpus, **resources}.items():
            need[name] = need.get(name, 0) + amount * count
    have = ray.cluster_resources()
    for name, amount in need.items():
        if amount > have.get(name, 0) + 1e-9:
            raise InputError(f"cluster cannot satisfy the request: {amount:g} {name} needed, "
                             f"{have.get(name, 0):g} in the cluster (cluster.* in the config)")


LOOPBACK = "127.0.0.1"
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's single-machine mode, on any platform


@contextmanager
def single_machine_mode(enabled: bool):
    """Ray on Linux replaces a node address of 127.0.0.1 with the machine's network address, and its GCS, raylet and
    workers then listen on every interface. In its single-machine mode (Ray's default on macOS and Windows) the node
    keeps 127.0.0.1 and every server listens there only. Ray reads the mode from the environment when it is imported,
    so both the imported flag (for this driver) and the variable (for the processes ray.init() starts) are set, and
    restored afterwards: a multi-node cluster started later from this process must not inherit them."""
    if not enabled:
        yield
        return
    saved_flag, saved_env = ray_constants.ENABLE_RAY_CLUSTER, os.environ.get(SINGLE_MACHINE_ENV)
    ray_constants.ENABLE_RAY_CLUSTER, os.environ[SINGLE_MACHINE_ENV] = False, "0"
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def connect(config: Config) -> None:
    """Attach to cluster.address, or to the cluster of the Ray job this driver runs in (RAY_ADDRESS), or start an
    embedded one. The working directory is restored afterwards: inside a `ray job submit --working-dir` job,
    ray.init() can delete and re-create it."""
    if ray.is_initialized():
        return
    c = config.cluster
    cwd = os.getcwd()
    address = c.address or os.environ.get("RAY_ADDRESS")
    if address is None:
        with single_machine_mode(c.node_ip == LOOPBACK):
            ray.init(num_cpus=c.num_cpus, include_dashboard=False, _node_ip_address=c.node_ip,
                     object_store_memory=c.object_store_mb * 2**20, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    return_to(cwd, c.timeout_s)


def return_to(directory: str, timeout_s: float) -> None:
    """chdir to `directory` once it exists: ray.init() can return while the job's working directory it deleted is
    still being unpacked again (seen as a FileNotFoundError in a `ray job submit` run of the test suite)."""
    deadline = time.time() + timeout_s
    while not os.path.isdir(directory):
        if time.time() > deadline:
            raise FaultError(f"the working directory {directory} did not come back within cluster.timeout_s "
                             f"{timeout_s:g} s after connecting to Ray")
        time.sleep(0.05)
    os.chdir(directory)


@dataclass
class Batch:
    """One rollout batch in flight, with what it takes to issue its calls again after a fault: the same prompts,
    seed and workers give the same samples."""

    index: int  # within the iteration: picks the seed and the workers
    iteration: int | None  # None: a batch of evaluation images, scored but never generated again
    plan: StepPlan | None
    prompts: list[str]
    metadata: list[dict]
    traj: ray.ObjectRef | None = None
    images: ray.ObjectRef | None = None
    version_ref: ray.ObjectRef | None = None
    version: int | None = None  # the weight version that made it, once generated
    scores: list = field(default_factory=list)  # a ref per reward term
    settled: list | None = None  # (scores, valid) per reward term, once settled


RESTARTED = (ray.exceptions.RayActorError, WeightsMissing)  # a call that failed because its worker restarted


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayTrainer(Trainer):
    def __init__(self, config: Config, run_dir: str | None = None, log: Callable[[str], None] = print,
                 resume: str | None = None):
        super().__init__(config, run_dir, log, resume)
        self.sync_weights()  # rollout workers start from the learner's weights, whatever they loaded

    def start_runtime(self) -> None:
        config = self.config
        connect(config)
        _check_resources(config)
        c = config.cluster
        rollout = ray.remote(reports_input_errors(RolloutWorker)).options(
            num_cpus=c.rollout_cpus, num_gpus=c.rollout_gpus, resources=dict(c.rollout_resources),
            max_restarts=c.max_restarts)
        reward = ray.remote(reports_input_errors(RewardWorker)).options(
            num_cpus=c.reward_cpus, num_gpus=c.reward_gpus, resources=dict(c.reward_resources),
            runtime_env=c.reward_runtime_env or None, max_restarts=c.max_restarts)
        learner = ray.remote(reports_input_errors(LearnerWorker)).options(
            num_cpus=c.learner_cpus, num_gpus=c.learner_gpus, resources=dict(c.learner_resources))
        self.rollouts = [rollout.remote(config) for _ in range(c.rollout_workers)]
        self.rewards = [reward.remote(config) for _ in range(c.reward_workers)]
        self.learners = [learner.remote(config, rank, c.learner_ranks) for rank in range(c.learner_ranks)]
        self.pools = {ROLLOUT: self.rollouts, REWARD: self.rewards}
        self.timeout = c.timeout_s
        self.version = 0
        self.transport = c.weight_sync
        self.prefetched: dict[int, list[Batch]] = {}
        self.average: tuple[int, list | None] | None = None  # (weight version, [ref] to theta's average at it)
        self.restarts = dict.fromkeys(self.pools, 0)
        self.reward_timeouts = {r.name: 0 for r in config.rewards}
        self._get([a.ready.remote() for a in self.rollouts + self.rewards + self.learners])
        self.incarnations = {role: self._get([a.incarnation.remote() for a in actors])
                             for role, actors in self.pools.items()}
        master = self._get(self.learners[0].rendezvous.remote())
        self._get([w.setup.remote(*master) for w in self.learners])
        if c.weight_sync == "collective":
            host, port = self._get(self.learners[0].host_weight_sync.remote())
            world = 1 + len(self.rollouts)
            joins = [w.join_weight_sync.remote(host, port, rank + 1, world) for rank, w in enumerate(self.rollouts)]
            self._get([self.learners[0].join_weight_sync.remote(host, port, 0, world)] + joins)

    def _get(self, refs, timeout: float | None = None):
        try:
            return ray.get(refs, timeout=timeout or self.timeout)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):  # bad input an actor found: one line, as in one process
                raise exc.cause from None
            raise

    def _outcomes(self, refs: list) -> list:
        """Each call's result or its Ray error, once all have ended (within the timeout)."""
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=self.timeout)
        out = []
        for ref in refs:
            try:
                out.append(self._get(ref))
            except ray.exceptions.RayError as exc:
                out.append(exc)
        return out

    def _from_learners(self, refs):
        """ray.get for learner calls. A learner's state lives only in it and in the checkpoints, so its death
        ends the run, with a message naming where to continue."""
        try:
            return self._get(refs)
        except ray.exceptions.RayActorError as exc:
            where = (f"the last complete checkpoint is {self.last_checkpoint}: continue with --resume auto"
                     if self.last_checkpoint else "no checkpoint was written yet")
            raise FaultError(f"a learner died ({_first_line(exc)}); {where}") from None

    # ---- faults of the restartable roles ----
    def _recover(self, role: str, index: int) -> None:
        """Wait until Ray has restarted a failed actor (at most cluster.max_restarts times). A new process is
        counted once, however many of its calls failed, and a rollout worker without the current weights gets
        them before it samples again."""
        actor = self.pools[role][index]
        deadline = time.time() + self.timeout
        while True:
            try:
                incarnation = self._get(actor.incarnation.remote())
                if incarnation != self.incarnations[role][index]:
                    self.incarnations[role][index] = incarnation
                    self.restarts[role] += 1
                    self.log(f"{role} worker {index} restarted (process {incarnation[1]})")
                if role == ROLLOUT and self._get(actor.weight_version.remote()) != self.version:
                    self._send_weights(index)
                return
            except ray.exceptions.ActorDiedError as exc:
                raise FaultError(f"{role} worker {index} died for good, its restarts used up "
                                 f"(cluster.max_restarts {self.config.cluster.max_restarts}): {_first_line(exc)}; "
                                 f"last checkpoint: {self.last_checkpoint or 'none yet'}") from None
            except ray.exceptions.RayActorError:  # still restarting
                if time.time() > deadline:
                    raise FaultError(f"{role} worker {index} did not come back within cluster.timeout_s "
                                     f"{self.timeout:g} s") from None
                time.sleep(0.2)

    def _send_weights(self, index: int) -> None:
        """The current weights to one (restarted) rollout worker, through the object store: a new process cannot
        join the broadcast group, which from now on is given up."""
        self._leave_broadcast()
        holder = self._from_learners([w.publish.remote("object_store") for w in self.learners])[0]
        self._get(self.rollouts[index].load_weights.remote(self.version, holder))

    def _leave_broadcast(self) -> None:
        if self.transport == "collective":
            self.transport = "object_store"
            self.log("weight sync: a rollout worker restarted and cannot join the broadcast group; weights go "
                     "through the object store from now on")

    # ---- one iteration ----
    def _launch(self, iteration: int, records: list[dict], plan: StepPlan) -> list[Batch]:
        batches = self._batches(repeat_each(records, self.config.algo.samples_per_prompt), iteration, plan)
        for batch in batches:
            self._issue(batch)
        return batches

    def _batches(self, metadata: list[dict], iteration: int | None, plan: StepPlan | None) -> list[Batch]:
        """The samples of `metadata` (one record each) in batches of sampler.batch_size, as workers take them."""
        size = self.config.sampler.batch_size
        return [Batch(k, iteration, plan, [r["prompt"] for r in chunk], chunk)
                for k, chunk in enumerate(metadata[s: s + size] for s in range(0, len(metadata), size))]

    def _issue(self, batch: Batch) -> None:
        """Submit (again) a batch's generation and every reward term's scoring of its images: each image reference
        goes straight from rollout to reward."""
        worker = self.rollouts[batch.index % len(self.rollouts)]
        batch.traj, batch.images, batch.version_ref = worker.generate.options(num_returns=3).remote(
            batch.prompts, batch.plan, rollout_seed(self.config.seed, batch.iteration, batch.index),
            batch.iteration, self.version)
        batch.scores = [self._score(batch, term) for term in range(len(self.config.rewards))]

    def _score(self, batch: Batch, term: int):
        scorer = self.rewards[batch.index % len(self.rewards)]
        return scorer.score.remote(term, batch.images, batch.prompts, batch.metadata)

    def rollout_and_score(self, iteration: int, records: list[dict], plan: StepPlan):
        batches = self.prefetched.pop(iteration, None) or self._launch(iteration, records, plan)
        per_batch = [self._settle(batch) for batch in batches]
        return batches, self._terms(per_batch)

    def _terms(self, per_batch: list[list[tuple[np.ndarray, np.ndarray]]]) -> list:
        return join_batches(per_batch, [reward.weight for reward in self.config.rewards])

    def _settle(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """A batch's generation, then its scores per term (once; later calls return them). Batches are settled in
        the order their calls were issued, so every earlier call on the same reward worker has ended when a term's
        wait starts, and its timeout measures that call alone."""
        while batch.version is None:
            try:
                batch.version = self._get(batch.version_ref)
            except RESTARTED:
                self._recover(ROLLOUT, batch.index % len(self.rollouts))
                self._issue(batch)
        if batch.settled is None:
            batch.settled = [self._settle_score(batch, term) for term in range(len(self.config.rewards))]
        return batch.settled

    def _settle_score(self, batch: Batch, term: int) -> tuple[np.ndarray, np.ndarray]:
        """One term's (scores, valid) for a batch. A call that hangs past cluster.reward_timeout_s has its worker
        restarted (nothing else frees it); hung or failed calls are retried cluster.reward_retries times, after
        which the batch stays unscored by this reward (invalid samples, counted in reward_failures)."""
        c, name = self.config.cluster, self.config.rewards[term].name
        scorer = batch.index % len(self.rewards)
        failures = 0
        while True:
            try:
                return self._get(batch.scores[term], timeout=c.reward_timeout_s)
            except ray.exceptions.GetTimeoutError:
                self.reward_timeouts[name] += 1
                ray.kill(self.rewards[scorer], no_restart=False)
                self._recover(REWARD, scorer)
                failures += 1
            except ray.exceptions.RayActorError:  # its worker died under it: not the reward's failure
                self._recover(REWARD, scorer)
            except ray.exceptions.RayTaskError as exc:
                batch_name = ("an evaluation batch" if batch.iteration is None
                              else f"a batch of iteration {batch.iteration + 1}")
                self.log(f"reward {name} failed on {batch_name}: {_first_line(exc)}")
                failures += 1
            if failures > c.reward_retries:
                return np.full(len(batch.prompts), np.nan), np.zeros(len(batch.prompts), dtype=bool)
            batch.scores[term] = self._score(batch, term)

    def update(self, iteration, handle, advantages, usable, plan):
        config = self.config
        if config.cluster.max_staleness >= 1 and iteration + 1 < config.train.iterations:
            self.prefetched[iteration + 1] = self._launch(iteration + 1, *self.iteration_inputs(iteration + 1))
        parts, sizes, versions = [b.traj for b in handle], [len(b.prompts) for b in handle], [b.version for b in handle]
        metrics = self._from_learners([w.update.remote(iteration, parts, sizes, versions, advantages, usable,
                                                       plan.trained) for w in self.learners])[0]
        self.version = metrics["weight_version"]
        return {**metrics, "sync_s": round(self.sync_weights(), 4)}

    def sync_weights(self) -> float:
        """Learner -> rollout workers; returns the seconds it took. Workers swap weights between batches. A
        broadcast that a dead worker broke is done again through the object store."""
        start = time.time()
        if self.transport == "collective":
            publish = [w.publish.remote("collective") for w in self.learners]
            self._sync_rollouts([w.receive_weights.remote() for w in self.rollouts], publish)
        if self.transport == "object_store":
            holder = self._from_learners([w.publish.remote("object_store") for w in self.learners])[0]
            self._sync_rollouts([w.load_weights.remote(self.version, holder) for w in self.rollouts])
        return time.time() - start

    def _sync_rollouts(self, calls: list, publish: list = ()) -> None:
        """Settle one weight-sync call per rollout worker (and the learners' publish). A worker that restarted is
        recovered, and gets the weights then; any other failure is raised, a learner's first."""
        outcomes = self._outcomes(calls)
        restarted = [i for i, out in enumerate(outcomes) if isinstance(out, RESTARTED)]
        if restarted:
            self._leave_broadcast()  # the group lost a member: the others missed this broadcast too
            self._outcomes(list(publish))  # the learner's side of the broken broadcast failed as well
            for index in restarted:
                self._recover(ROLLOUT, index)
            return
        self._from_learners(list(publish))
        for out in outcomes:
            if isinstance(out, Exception):
                raise out

    def evaluate_split(self, records, steps):
        """Rollout worker 0 decodes; its image batches go straight to the reward workers and are scored (with
        their timeouts and retries) as rollout batches are."""
        for prefetched in self.prefetched.values():  # one step off: their scoring calls are queued first
            for batch in prefetched:
                self._settle(batch)
        batches = self._batches(repeat_each(records, self.config.eval.n_per_prompt), None, None)
        (result, samples), image_refs = self._ask_rollout("evaluate", records, steps, self._average_ref(),
                                                          kept=len(batches))
        for batch, images in zip(batches, image_refs, strict=True):
            batch.images, batch.version = images, self.version  # made: never issued again
            batch.scores = [self._score(batch, term) for term in range(len(self.config.rewards))]
        return result, samples, self._terms([self._settle(batch) for batch in batches])

    def _average_ref(self) -> list | None:
        """[ref] to theta's moving average for evaluations (None: evaluate the live weights). Learner rank 0 puts it
        in the object store once per weight version, not once per split and step count evaluated."""
        if not self.config.algo.ema_decay:
            return None
        if self.average is None or self.average[0] != self.version:
            self.average = (self.version, self._from_learners(self.learners[0].average_weights.remote()))
        return self.average[1]

    def learned_schedule(self, steps, prompts):
        return self._ask_rollout("learned_schedule", steps, prompts)

    def _ask_rollout(self, method: str, *args, kept: int = 0):
        """A call on rollout worker 0 with the current weights, issued again if the worker restarted. With kept > 0,
        (its first return, references to the `kept` others): objects the driver owns, which outlive the worker."""
        while True:
            call = getattr(self.rollouts[0], method)
            try:
                if not kept:
                    return self._get(call.remote(*args, self.version))
                refs = call.options(num_returns=1 + kept).remote(*args, self.version)
                return self._get(refs[0]), refs[1:]
            except RESTARTED:
                self._recover(ROLLOUT, 0)

    # ---- checkpoints and fault counts ----
    def save_learner(self, folder: Path) -> None:
        self._from_learners([w.save_checkpoint.remote(str(folder)) for w in self.learners])

    def load_learner(self, folder: Path, state: dict) -> None:
        self.version = state["weight_version"]
        self._from_learners([w.load_checkpoint.remote(str(folder), self.version) for w in self.learners])

    def runtime_state(self) -> dict:
        return {"weight_version": self.version}

    def runtime_metrics(self) -> dict:
        """This iteration's fault counts, then reset: rows hold counts per iteration, not running totals."""
        row = {"actor_restarts": self.restarts, "reward_timeouts": self.reward_timeouts}
        self.restarts = dict.fromkeys(self.restarts, 0)
        self.reward_timeouts = dict.fromkeys(self.reward_timeouts, 0)
        return row

    def shutdown(self) -> None:
        """End this run's actors (the Ray session stays up for the next run in this process)."""
        for actor in self.rollouts + self.rewards + self.learners:
            ray.kill(actor)
        self.metrics.close()
