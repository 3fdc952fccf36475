"""The Ray runtime: rollout workers, reward workers and a DeepSpeed learner group as Ray actors, driven by the
shared training loop. The driver moves object references and small arrays (scores, advantages), never the
trajectories or weights themselves.

Data flow per iteration: rollout batches (the same batches and seeds as the single-process trainer) go to the
rollout pool; each batch's images go straight to a reward worker; the driver turns the scores into group
advantages; every learner rank takes its shard of the trajectories from the object store and updates; learner
rank 0 publishes the new weights (model and schedule policy, one versioned message); rollout workers swap them in
between batches. With max_staleness 1 the next iteration's rollouts are launched before the update finishes.

Faults: Ray restarts a dead rollout or reward worker (cluster.max_restarts); the driver waits for it, gives a
rollout worker the current weights, and issues the calls it lost again with the same inputs and seeds. A hung
reward call is ended by restarting its worker (cluster.reward_timeout_s), retried (cluster.reward_retries), then
left unscored. A dead learner ends the run with a FaultError naming the last checkpoint.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
import torch

from cogrpo.cluster.plots import learned_schedule
from cogrpo.cluster.trainer import Trainer, schedule_for
from cogrpo.cluster.weight_sync import BroadcastGroup, load_named_state, named_state, to_numpy
from cogrpo.learner.checkpoint import (DEEPSPEED_DIR, load_optimizers, load_policy_weights, rng_state,
                                       save_optimizers, save_weights, set_rng_state)
from cogrpo.learner.cogrpo import Learner, ScoredBatch, make_phi_step, theta_optimizer
from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import compute_device
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.errors import FaultError, InputError
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.registry import build_reward, score_one
from cogrpo.rollout.collect import rollout_seed
from cogrpo.rollout.evaluate import evaluate
from cogrpo.rollout.sampler import generate
from cogrpo.rollout.schedule import hand_knobs
from cogrpo.rollout.steps import StepPlan


def reports_input_errors(cls: type) -> type:
    """`cls` as an actor whose constructor's InputError (a missing checkpoint, say) is raised again by `ready()`:
    Ray reports a failed constructor only as ActorDiedError text, while a method's exception reaches the driver
    as itself, for `RayTrainer._get` to show as one line."""

    class Checked(cls):
        def __init__(self, *args, **kwargs):
            self.input_error = None
            try:
                super().__init__(*args, **kwargs)
            except InputError as exc:
                self.input_error = exc

        def ready(self) -> str:
            if self.input_error is not None:
                raise self.input_error
            return super().ready()

    Checked.__name__ = Checked.__qualname__ = cls.__name__
    return Checked


ROLLOUT, REWARD = "rollout", "reward"  # the roles Ray restarts (a learner's state lives only in it)


class WeightsMissing(RuntimeError):
    """A rollout worker was asked to sample with weights it does not hold: Ray restarted it, and a new process
    starts from the configured checkpoint, so the driver must send it the current weights first."""


class Actor:
    def ready(self) -> str:
        """The id of the node this actor runs on (and proof that its constructor succeeded)."""
        return ray.get_runtime_context().get_node_id()

    def incarnation(self) -> tuple[str, int]:
        """(node id, process id): it changes when Ray restarts the actor, which is how the driver counts restarts."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def join_weight_sync(self, host: str, port: int, rank: int, world: int) -> None:
        """Join the broadcast group (learner rank 0 is its rank 0 and hosts the store). Collective."""
        timeout = self.config.cluster.timeout_s
        store = self.sync_store if rank == 0 else BroadcastGroup.connect_store(host, port, timeout)
        self.sync = BroadcastGroup(store, rank, world, ray.util.get_node_ip_address(), timeout)


class RolloutWorker(Actor):
    """Holds the MDM and the schedule policy; generates trajectory batches tagged with its weight version."""

    def __init__(self, config: Config):
        torch.set_num_threads(config.threads)
        self.config = config
        device = compute_device()
        # on a GPU the learner trains in bf16 (deepspeed_config), so its published weights are bf16 too
        self.model = build_model(config.model).to(device, torch.bfloat16 if device.type == "cuda" else None)
        self.policy = SchedulePolicy(config.schedule_policy, self.model.prompt_feature_dim)
        self.version: int | None = None  # no weights from the learner yet
        self.sync: BroadcastGroup | None = None  # joined at start; a restarted process is in no group

    def weight_version(self) -> int | None:
        return self.version

    def _check_weights(self, version: int) -> None:
        if self.version != version:
            raise WeightsMissing(f"rollout worker holds weight version {self.version}, the driver expects {version}")

    def load_weights(self, version: int, holder: list) -> int:
        """Object-store transport: swap in published weights. Actor calls run one at a time, so weights only
        change between batches."""
        load_named_state(self.model, self.policy, ray.get(holder[0]))
        self.version = version
        return version

    def receive_weights(self) -> int:
        """Collective transport: the broadcast lands in the live tensors (state_dict views), between batches."""
        if self.sync is None:
            raise WeightsMissing("this rollout worker is in no broadcast group: Ray restarted it")
        self.version = self.sync.receive(named_state(self.model, self.policy))
        return self.version

    def generate(self, prompts: list[str], plan: StepPlan, seed: int, iteration: int, version: int):
        """(trajectory, images, weight version): three returns, so the driver can wait on the small one."""
        self._check_weights(version)
        config = self.config
        self.policy.decay_std(iteration)
        schedule = schedule_for(config, self.policy, config.sampler.steps, sample_actions=True)
        cond = self.model.encode_prompts(prompts)
        traj = generate(self.model, cond, schedule, config.sampler.steps, seed, config.sampler.kind,
                        stochastic=plan.stochastic, plan=plan.plan)
        return traj, self.model.decode_images(traj.tokens), self.version

    def evaluate(self, records: list[dict], steps: int, version: int):
        self._check_weights(version)
        config = self.config
        schedule = schedule_for(config, self.policy, steps, sample_actions=False)
        result, _, images = evaluate(self.model, records, schedule, steps, config.seed, config.sampler.batch_size,
                                     config.eval.n_per_prompt, config.sampler.kind)
        return result, images[:16]

    def learned_schedule(self, steps: int, prompts: list[str], version: int) -> torch.Tensor:
        self._check_weights(version)
        feat = self.model.prompt_features_cpu(self.model.encode_prompts(prompts))
        return learned_schedule(self.policy, hand_knobs(self.config.sampler, steps), feat)

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(named_state(self.model, self.policy))


class RewardWorker(Actor):
    def __init__(self, config: Config):
        self.rewards = [(build_reward(r), r.weight) for r in config.rewards]

    def score(self, term: int, images: np.ndarray, prompts: list[str], metadata: list[dict]):
        """One reward term's (scores, valid): a call per term, so a hang or a failure is charged to its reward."""
        return score_one(self.rewards[term][0], images, prompts, metadata)


DEEPSPEED_TAG = "state"


def load_deepspeed_checkpoint(engine, path: str) -> dict:
    """engine.load_checkpoint with every file read by torch.load(weights_only=True): DeepSpeed's own reader
    unpickles anything, so a tampered checkpoint could run code. Beyond tensors and plain data it admits only the
    three small DeepSpeed classes its ZeRO optimizer state holds. Returns the client state saved with it."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    class WeightsOnly(TorchCheckpointEngine):
        def load(self, path, map_location=None):
            with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
                return torch.load(path, map_location=map_location, weights_only=True)

    own, engine.checkpoint_engine = engine.checkpoint_engine, WeightsOnly()
    try:
        loaded, client = engine.load_checkpoint(path, tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)
    except pickle.UnpicklingError as exc:
        raise InputError(f"DeepSpeed checkpoint {path} holds more than tensors and plain data "
                         f"({str(exc).strip().splitlines()[-1]})") from None
    finally:
        engine.checkpoint_engine = own
    if loaded is None:
        raise InputError(f"no DeepSpeed checkpoint in {path}")
    return client


def deepspeed_config(config: Config) -> dict:
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "gradient_clipping": config.algo.grad_clip, "zero_optimization": {"stage": config.cluster.zero_stage},
            "bf16": {"enabled": torch.cuda.is_available()}, "steps_per_print": 10**9}


class DeepSpeedStep:
    """The theta step through a DeepSpeed engine (ZeRO partitioning, gradient averaging and clipping inside)."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, loss: torch.Tensor) -> float:
        self.engine.backward(loss)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")


def _average_grads(params: list[torch.nn.Parameter]) -> None:
    """Data-parallel mean of the schedule policy's gradients (it is small and replicated on every rank)."""
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


class LearnerWorker(Actor):
    """One data-parallel rank: DeepSpeed (ZeRO stage from the config, gloo on CPU, NCCL on GPU) for theta, a
    replicated schedule policy for phi, and the shared Learner math."""

    def __init__(self, config: Config, rank: int, world: int):
        torch.set_num_threads(config.threads)
        self.config, self.rank, self.world = config, rank, world

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: its node's address and a free port for the learners' process group."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the learners' group and build the DeepSpeed engine (collective: every rank at once)."""
        import deepspeed

        config, rank, world = self.config, self.rank, self.world
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK="0")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, rank=rank, world_size=world,
                                   timeout=datetime.timedelta(seconds=config.cluster.timeout_s))
        torch.manual_seed(config.seed)
        model = build_model(config.model)
        self.module = model
        self.policy = SchedulePolicy(config.schedule_policy, model.prompt_feature_dim)
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=theta_optimizer(model, config.algo),
                                               config=deepspeed_config(config))
        reduce = _average_grads if world > 1 else None
        self.learner = Learner(self.engine, self.policy, config, theta_step=DeepSpeedStep(self.engine),
                               phi_step=make_phi_step(self.policy, config, reduce_grads=reduce))
        self.version = 0

    def update(self, iteration: int, parts: list, versions: list[int], advantages: np.ndarray, usable: np.ndarray,
               trained: list[int]) -> dict:
        """parts: object refs of the trajectories per rollout batch; versions: the weight version of each. Every
        rank takes an equal shard of the usable samples (a remainder that does not divide evenly is left out, so
        all ranks step together)."""
        trajs = ray.get(list(parts))
        traj = Trajectory.cat(trajs)
        sample_version = np.concatenate([np.full(t.batch_size, v) for t, v in zip(trajs, versions)])
        index = np.flatnonzero(usable)
        index = index[: len(index) // self.world * self.world][self.rank:: self.world]
        batch = ScoredBatch(traj.select(torch.from_numpy(index)), torch.from_numpy(advantages[index]),
                            torch.ones(len(index), dtype=torch.bool), trained)
        stale = sample_version < self.version
        metrics = self.learner.update(batch, iteration, stale=bool(stale[index].any()))
        self.version += 1
        return {**metrics, "weight_version": self.version, "stale_samples": int(stale.sum()),
                "staleness": float(np.mean(self.version - 1 - sample_version))}

    def _full_state(self) -> dict[str, torch.Tensor] | None:
        """The full model state on rank 0 (a ZeRO-3 gather is a collective: every rank calls this). Below ZeRO-3
        the live tensors are returned uncopied: actor calls run one at a time, so nothing updates them meanwhile."""
        import deepspeed

        params = list(self.engine.module.parameters())
        gather = self.config.cluster.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
            if self.rank != 0:
                return None
            state = self.engine.module.state_dict()
            return {k: v.detach().clone() if gather else v.detach() for k, v in state.items()}

    def weights(self) -> dict[str, np.ndarray] | None:
        """Rank 0's full message as numpy (for checks; every rank calls it, as for publish)."""
        state = self._full_state()
        return to_numpy(named_state(self.module, self.policy, state)) if self.rank == 0 else None

    def host_weight_sync(self) -> tuple[str, int]:
        """Rank 0 opens the broadcast group's rendezvous store; the others connect to (host, port)."""
        host = ray.util.get_node_ip_address()
        self.sync_store = BroadcastGroup.host_store(host, self.config.cluster.timeout_s)
        return host, self.sync_store.port

    def publish(self, transport: str) -> list | None:
        """Every rank calls this (the ZeRO-3 gather is collective). Rank 0 then broadcasts the versioned message
        (`collective`; returns None) or puts it in the object store and returns [ref] (`object_store`, wrapped so
        the driver passes the reference on without resolving it). The object store serves whatever
        cluster.weight_sync says: a restarted rollout worker cannot join the broadcast group."""
        state = self._full_state()
        if self.rank != 0:
            return None
        message = named_state(self.module, self.policy, state)
        if transport == "collective":
            self.sync.send(self.version, message)
            return None
        return [ray.put(to_numpy(message))]

    def save_checkpoint(self, folder: str) -> None:
        """Every rank (the ZeRO-3 gather and DeepSpeed's save are collective): rank 0 writes both policies' whole
        weights as safetensors and phi's optimizer state; DeepSpeed writes theta's, each rank its partition, with
        the rank's RNG states as client state."""
        state = self._full_state()
        if self.rank == 0:
            save_weights(Path(folder), self.module, self.policy, state)
            save_optimizers(Path(folder), {"phi": self.learner.phi_step.optimizer})
        self.engine.save_checkpoint(str(Path(folder) / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                                    client_state={"rng": rng_state()}, save_latest=False)

    def load_checkpoint(self, folder: str, version: int) -> None:
        """Every rank: theta and its optimizer through DeepSpeed, phi and its optimizer from rank 0's files."""
        client = load_deepspeed_checkpoint(self.engine, str(Path(folder) / DEEPSPEED_DIR))
        load_policy_weights(Path(folder), self.policy)
        load_optimizers(Path(folder), {"phi": self.learner.phi_step.optimizer})
        set_rng_state(client["rng"])
        self.version = version


def _check_resources(config: Config) -> None:
    """Fail at once with a clear message when the cluster cannot hold the requested actors (never hang pending)."""
    c = config.cluster
    need = {"CPU": c.rollout_workers * c.rollout_cpus + c.reward_workers * c.reward_cpus + c.learner_ranks * c.learner_cpus,
            "GPU": c.rollout_workers * c.rollout_gpus + c.reward_workers * c.reward_gpus + c.learner_ranks * c.learner_gpus}
    for pool, count in ((c.rollout_resources, c.rollout_workers), (c.reward_resources, c.reward_workers),
                        (c.learner_resources, c.learner_ranks)):
        for name, amount in pool.items():
            need[name] = need.get(name, 0) + amount * count
    have = ray.cluster_resources()
    for name, amount in need.items():
        if amount > have.get(name, 0) + 1e-9:
            raise InputError(f"cluster cannot satisfy the request: {amount:g} {name} needed, "
                             f"{have.get(name, 0):g} in the cluster (cluster.* in the config)")


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
        ray.init(num_cpus=c.num_cpus, include_dashboard=False, _node_ip_address=c.node_ip,
                 object_store_memory=c.object_store_mb * 2**20, log_to_driver=False, logging_level="WARNING")
    else:
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    os.chdir(cwd)


@dataclass
class Batch:
    """One rollout batch in flight, with what it takes to issue its calls again after a fault: the same prompts,
    seed and workers give the same samples."""

    index: int  # within the iteration: picks the seed and the workers
    iteration: int
    plan: StepPlan
    prompts: list[str]
    metadata: list[dict]
    traj: ray.ObjectRef | None = None
    images: ray.ObjectRef | None = None
    version_ref: ray.ObjectRef | None = None
    version: int | None = None  # the weight version that made it, once generated
    scores: list = field(default_factory=list)  # a ref per reward term


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
            self._get([self.learners[0].join_weight_sync.remote(host, port, 0, world)]
                      + [w.join_weight_sync.remote(host, port, rank + 1, world) for rank, w in enumerate(self.rollouts)])

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
        config = self.config
        metadata = [r for r in records for _ in range(config.algo.group_size)]
        size = config.sampler.batch_size
        batches = [Batch(k, iteration, plan, [r["prompt"] for r in chunk], chunk)
                   for k, chunk in enumerate(metadata[s: s + size] for s in range(0, len(metadata), size))]
        for batch in batches:
            self._issue(batch)
        return batches

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
        terms = [(np.concatenate([b[i][0] for b in per_batch]), np.concatenate([b[i][1] for b in per_batch]),
                  reward.weight) for i, reward in enumerate(self.config.rewards)]
        return batches, terms

    def _settle(self, batch: Batch) -> list[tuple[np.ndarray, np.ndarray]]:
        """A batch's generation, then its scores per term. Batches are settled in order, so every earlier call on
        the same reward worker has ended when a term's wait starts, and its timeout measures that call alone."""
        while batch.version is None:
            try:
                batch.version = self._get(batch.version_ref)
            except RESTARTED:
                self._recover(ROLLOUT, batch.index % len(self.rollouts))
                self._issue(batch)
        return [self._settle_score(batch, term) for term in range(len(self.config.rewards))]

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
                self.log(f"reward {name} failed on a batch of iteration {batch.iteration + 1}: {_first_line(exc)}")
                failures += 1
            if failures > c.reward_retries:
                return np.full(len(batch.prompts), np.nan), np.zeros(len(batch.prompts), dtype=bool)
            batch.scores[term] = self._score(batch, term)

    def update(self, iteration, handle, advantages, usable, plan):
        config = self.config
        if config.cluster.max_staleness >= 1 and iteration + 1 < config.train.iterations:
            self.prefetched[iteration + 1] = self._launch(iteration + 1, *self.iteration_inputs(iteration + 1))
        parts, versions = [b.traj for b in handle], [b.version for b in handle]
        metrics = self._from_learners([w.update.remote(iteration, parts, versions, advantages, usable, plan.trained)
                                       for w in self.learners])[0]
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
        return self._ask_rollout("evaluate", records, steps)

    def learned_schedule(self, steps, prompts):
        return self._ask_rollout("learned_schedule", steps, prompts)

    def _ask_rollout(self, method: str, *args):
        """A call on rollout worker 0 with the current weights, issued again if the worker restarted."""
        while True:
            try:
                return self._get(getattr(self.rollouts[0], method).remote(*args, self.version))
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
