"""The Ray runtime: rollout workers, reward workers and a DeepSpeed learner group as Ray actors, driven by the
shared training loop. The driver moves object references and small arrays (scores, advantages), never the
trajectories or weights themselves.

Data flow per iteration: rollout batches (the same batches and seeds as the single-process trainer) go to the
rollout pool; each batch's images go straight to a reward worker; the driver turns the scores into group
advantages; every learner rank takes its shard of the trajectories from the object store and updates; learner
rank 0 publishes the new weights (model and schedule policy, one versioned message); rollout workers swap them in
between batches. With max_staleness 1 the next iteration's rollouts are launched before the update finishes.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Callable

import numpy as np
import ray
import torch

from cogrpo.cluster.plots import learned_schedule
from cogrpo.cluster.trainer import Trainer, read_prompt_sets, schedule_for
from cogrpo.cluster.weight_sync import BroadcastGroup, load_named_state, named_state, to_numpy
from cogrpo.learner.checkpoint import save_checkpoint
from cogrpo.learner.cogrpo import Learner, ScoredBatch, TorchStep, make_phi_step, theta_optimizer
from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import compute_device
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.errors import InputError
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.registry import build_reward, score_all
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


class Actor:
    def ready(self) -> str:
        """The id of the node this actor runs on (and proof that its constructor succeeded)."""
        return ray.get_runtime_context().get_node_id()

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
        self.version = 0

    def load_weights(self, version: int, holder: list) -> int:
        """Object-store transport: swap in published weights. Actor calls run one at a time, so weights only
        change between batches."""
        load_named_state(self.model, self.policy, ray.get(holder[0]))
        self.version = version
        return version

    def receive_weights(self) -> int:
        """Collective transport: the broadcast lands in the live tensors (state_dict views), between batches."""
        self.version = self.sync.receive(named_state(self.model, self.policy))
        return self.version

    def generate(self, prompts: list[str], plan: StepPlan, seed: int, iteration: int):
        config = self.config
        self.policy.decay_std(iteration)
        schedule = schedule_for(config, self.policy, config.sampler.steps, sample_actions=True)
        cond = self.model.encode_prompts(prompts)
        traj = generate(self.model, cond, schedule, config.sampler.steps, seed, config.sampler.kind,
                        stochastic=plan.stochastic, plan=plan.plan)
        return (traj, self.version), self.model.decode_images(traj.tokens)

    def evaluate(self, records: list[dict], steps: int):
        config = self.config
        schedule = schedule_for(config, self.policy, steps, sample_actions=False)
        result, _, images = evaluate(self.model, records, schedule, steps, config.seed, config.sampler.batch_size,
                                     config.eval.n_per_prompt, config.sampler.kind)
        return result, images[:16]

    def learned_schedule(self, steps: int, prompts: list[str]) -> torch.Tensor:
        feat = self.model.prompt_features_cpu(self.model.encode_prompts(prompts))
        return learned_schedule(self.policy, hand_knobs(self.config.sampler, steps), feat)

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(named_state(self.model, self.policy))


class RewardWorker(Actor):
    def __init__(self, config: Config):
        self.rewards = [(build_reward(r), r.weight) for r in config.rewards]

    def score(self, images: np.ndarray, prompts: list[str], metadata: list[dict]):
        return score_all(self.rewards, images, prompts, metadata)


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

    def update(self, iteration: int, parts: list, advantages: np.ndarray, usable: np.ndarray,
               trained: list[int]) -> dict:
        """parts: object refs of (trajectory, weight version) per rollout batch. Every rank takes an equal shard of
        the usable samples (a remainder that does not divide evenly is left out, so all ranks step together)."""
        trajs, versions = zip(*ray.get(list(parts)))
        traj = Trajectory.cat(list(trajs))
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

    def publish(self) -> list | None:
        """Every rank calls this (the ZeRO-3 gather is collective). Rank 0 then broadcasts the versioned message
        (collective transport; returns None) or puts it in the object store and returns [ref] (wrapped, so the
        driver passes the reference on without resolving it)."""
        state = self._full_state()
        if self.rank != 0:
            return None
        message = named_state(self.module, self.policy, state)
        if self.config.cluster.weight_sync == "collective":
            self.sync.send(self.version, message)
            return None
        return [ray.put(to_numpy(message))]

    def save_checkpoint(self, run_dir: str, iteration: int) -> None:
        state = self._full_state()
        if self.rank == 0:
            save_checkpoint(run_dir, iteration, self.module, self.policy, {"seed": self.config.seed}, state)


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


class RayTrainer(Trainer):
    def __init__(self, config: Config, run_dir: str | None = None, log: Callable[[str], None] = print):
        read_prompt_sets(config)  # a bad prompt file fails before the cluster starts
        connect(config)
        _check_resources(config)
        c = config.cluster
        rollout = ray.remote(reports_input_errors(RolloutWorker)).options(
            num_cpus=c.rollout_cpus, num_gpus=c.rollout_gpus, resources=dict(c.rollout_resources))
        reward = ray.remote(reports_input_errors(RewardWorker)).options(
            num_cpus=c.reward_cpus, num_gpus=c.reward_gpus, resources=dict(c.reward_resources),
            runtime_env=c.reward_runtime_env or None)
        learner = ray.remote(reports_input_errors(LearnerWorker)).options(
            num_cpus=c.learner_cpus, num_gpus=c.learner_gpus, resources=dict(c.learner_resources))
        self.rollouts = [rollout.remote(config) for _ in range(c.rollout_workers)]
        self.rewards = [reward.remote(config) for _ in range(c.reward_workers)]
        self.learners = [learner.remote(config, rank, c.learner_ranks) for rank in range(c.learner_ranks)]
        self.timeout = c.timeout_s
        self.version = 0
        self.prefetched: dict[int, tuple] = {}
        self._get([a.ready.remote() for a in self.rollouts + self.rewards + self.learners])
        master = self._get(self.learners[0].rendezvous.remote())
        self._get([w.setup.remote(*master) for w in self.learners])
        if c.weight_sync == "collective":
            host, port = self._get(self.learners[0].host_weight_sync.remote())
            world = 1 + len(self.rollouts)
            self._get([self.learners[0].join_weight_sync.remote(host, port, 0, world)]
                      + [w.join_weight_sync.remote(host, port, rank + 1, world) for rank, w in enumerate(self.rollouts)])
        super().__init__(config, run_dir, log)
        self.sync_weights()  # version 0: rollout workers start from the learner's weights, whatever they loaded

    def _get(self, refs):
        try:
            return ray.get(refs, timeout=self.timeout)
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, InputError):  # bad input an actor found: one line, as in one process
                raise exc.cause from None
            raise

    def _launch(self, iteration: int, records: list[dict], plan: StepPlan) -> tuple[list, list]:
        config, algo = self.config, self.config.algo
        metadata = [r for r in records for _ in range(algo.group_size)]
        size = config.sampler.batch_size
        parts, scores = [], []
        for k, start in enumerate(range(0, len(metadata), size)):
            chunk = metadata[start: start + size]
            prompts = [r["prompt"] for r in chunk]
            worker = self.rollouts[k % len(self.rollouts)]
            traj_ref, images_ref = worker.generate.options(num_returns=2).remote(
                prompts, plan, rollout_seed(config.seed, iteration, k), iteration)
            parts.append(traj_ref)
            scores.append(self.rewards[k % len(self.rewards)].score.remote(images_ref, prompts, chunk))
        return parts, scores

    def rollout_and_score(self, iteration: int, records: list[dict], plan: StepPlan):
        parts, scores = self.prefetched.pop(iteration, None) or self._launch(iteration, records, plan)
        per_batch = self._get(scores)
        terms = [(np.concatenate([b[i][0] for b in per_batch]), np.concatenate([b[i][1] for b in per_batch]),
                  per_batch[0][i][2]) for i in range(len(per_batch[0]))]
        return parts, terms

    def update(self, iteration, handle, advantages, usable, plan):
        config = self.config
        if config.cluster.max_staleness >= 1 and iteration + 1 < config.train.iterations:
            from cogrpo.data.prompts import training_records
            from cogrpo.rollout.steps import step_plan

            nxt = iteration + 1
            records = training_records(config.seed, nxt, config.algo.prompts_per_iteration, self.pool)
            self.prefetched[nxt] = self._launch(nxt, records, step_plan(config.algo.steps, config.sampler.steps,
                                                                        nxt, config.seed))
        metrics = self._get([w.update.remote(iteration, handle, advantages, usable, plan.trained)
                             for w in self.learners])[0]
        self.version = metrics["weight_version"]
        return {**metrics, "sync_s": round(self.sync_weights(), 4)}

    def sync_weights(self) -> float:
        """Learner -> rollout workers; returns the seconds it took. Workers swap weights between batches."""
        start = time.time()
        publish = [w.publish.remote() for w in self.learners]
        if self.config.cluster.weight_sync == "collective":
            self._get(publish + [w.receive_weights.remote() for w in self.rollouts])
        else:
            holder = self._get(publish)[0]
            self._get([w.load_weights.remote(self.version, holder) for w in self.rollouts])
        return time.time() - start

    def evaluate_split(self, records, steps):
        return self._get(self.rollouts[0].evaluate.remote(records, steps))

    def learned_schedule(self, steps, prompts):
        return self._get(self.rollouts[0].learned_schedule.remote(steps, prompts))

    def checkpoint(self, iteration: int) -> None:
        self._get([w.save_checkpoint.remote(str(self.run.path), iteration) for w in self.learners])

    def shutdown(self) -> None:
        """End this run's actors (the Ray session stays up for the next run in this process)."""
        for actor in self.rollouts + self.rewards + self.learners:
            ray.kill(actor)
        self.metrics.close()
