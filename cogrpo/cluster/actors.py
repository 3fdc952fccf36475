"""What runs inside each Ray actor of the runtime: rollout workers (the MDM and the schedule policy, sampling),
reward workers (scoring image batches) and learner ranks (DeepSpeed for theta, a replicated schedule policy for
phi, the shared Learner math). The driver that wires them together is cogrpo/cluster/ray_runtime.py.
"""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path

import numpy as np
import ray
import torch

from cogrpo.cluster.plots import learned_schedule
from cogrpo.cluster.trainer import rollout_schedule, schedule_for
from cogrpo.cluster.weight_sync import (BroadcastGroup, connect_store, host_store, load_named_state, named_state,
                                        pin_gloo_to, to_numpy)
from cogrpo.learner.averaging import WeightAverage, weights_swapped_in
from cogrpo.learner.checkpoint import (DEEPSPEED_DIR, load_optimizers, load_weights, rng_state,
                                       save_optimizers, save_weights, set_rng_state)
from cogrpo.learner.cogrpo import Learner, ScoredBatch, frozen_copy, make_phi_step, theta_optimizer
from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import compute_device, configure_compute
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.errors import InputError
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.registry import build_reward, score_one
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
        store = self.sync_store if rank == 0 else connect_store(host, port, timeout)
        self.sync = BroadcastGroup(store, rank, world, ray.util.get_node_ip_address(), timeout)


class RolloutWorker(Actor):
    """Holds the MDM and the schedule policy; generates trajectory batches tagged with its weight version."""

    def __init__(self, config: Config):
        configure_compute(config.threads)
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
        schedule = rollout_schedule(config, self.policy, iteration)
        cond = self.model.encode_prompts(prompts)
        traj = generate(self.model, cond, schedule, config.sampler.steps, seed, config.sampler.kind,
                        stochastic=plan.stochastic, plan=plan.plan)
        return traj, self.model.decode_images(traj.tokens), self.version

    def evaluate(self, records: list[dict], steps: int, average: list | None, version: int):
        """((GenEval summary, the first 16 records' images), then each batch of sampler.batch_size images as a
        return of its own, for the driver to pass on to the reward workers unseen). average: [ref] to the
        learner's moving average of theta, evaluated in place of the live weights."""
        self._check_weights(version)
        config = self.config
        schedule = schedule_for(config, self.policy, steps, sample_actions=False)
        with weights_swapped_in(self.model, ray.get(average[0]) if average else None):
            result, _, images = evaluate(self.model, records, schedule, steps, config.seed,
                                         config.sampler.batch_size, config.eval.n_per_prompt, config.sampler.kind)
        flat, size = images.reshape(-1, *images.shape[2:]), config.sampler.batch_size
        return ((result, images[:16]), *(flat[start: start + size] for start in range(0, len(flat), size)))

    def learned_schedule(self, steps: int, prompts: list[str], version: int) -> torch.Tensor:
        self._check_weights(version)
        feat = self.model.prompt_features_cpu(self.model.encode_prompts(prompts))
        return learned_schedule(self.policy, hand_knobs(self.config.sampler, steps), feat)

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(named_state(self.model, self.policy))


class RewardWorker(Actor):
    def __init__(self, config: Config):
        configure_compute(config.threads)
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
        self.engine, self.optimizer = engine, engine.optimizer

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


def rank_shard(sizes: list[int], usable: np.ndarray, rank: int, world: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A learner rank's equal share of the usable samples of batches of `sizes`: (its samples' indices in the
    iteration, the batches they lie in, their indices in those batches concatenated). Shares are contiguous, so a
    rank needs about 1/world of the batches; a remainder that does not divide evenly is left out so that all ranks
    step together; an empty share still names one batch, whose step plan the update reads."""
    starts = np.cumsum([0, *sizes])
    index = np.flatnonzero(usable)
    index = index[: len(index) // world * world].reshape(world, -1)[rank]
    batch_of = np.searchsorted(starts, index, side="right") - 1
    needed = np.unique(batch_of) if len(index) else np.array([0])
    needed_starts = np.cumsum([0, *(sizes[b] for b in needed)])
    return index, needed, index - starts[batch_of] + needed_starts[np.searchsorted(needed, batch_of)]


class LearnerWorker(Actor):
    """One data-parallel rank: DeepSpeed (ZeRO stage from the config, gloo on CPU, NCCL on GPU) for theta, a
    replicated schedule policy for phi, and the shared Learner math."""

    def __init__(self, config: Config, rank: int, world: int):
        configure_compute(config.threads)
        self.config, self.rank, self.world = config, rank, world

    def _open_store(self) -> tuple[tuple[str, int], torch.distributed.TCPStore]:
        """A rendezvous store on this node's address: ((address, port) for the other ranks, the store)."""
        host = ray.util.get_node_ip_address()
        store = host_store(host, self.config.cluster.timeout_s)
        return (host, store.port), store

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0: opens the learners' rendezvous store; the others join the group at the returned address."""
        address, self.group_store = self._open_store()
        return address

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the learners' group and build the DeepSpeed engine (collective: every rank at once). The default
        group is formed on rank 0's store, so DeepSpeed adopts it instead of opening one on every interface."""
        import deepspeed

        config, rank, world = self.config, self.rank, self.world
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        timeout = datetime.timedelta(seconds=config.cluster.timeout_s)
        store = self.group_store if rank == 0 else connect_store(master_addr, master_port, config.cluster.timeout_s)
        if backend == "gloo":
            pin_gloo_to(ray.util.get_node_ip_address())
        torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
        # DeepSpeed's CPU backend would JIT-compile a shared-memory all-reduce here (C++, 24-60 s per fresh
        # environment, under a file lock) after probing every op with the compiler. Only its inference path uses
        # that kernel; training's collectives are torch.distributed's. The probe's result is a module attribute
        # DeepSpeed reads through .get(name, False), so an empty one means nothing is compiled.
        deepspeed.ops.__compatible_ops__ = {}
        deepspeed.init_distributed(dist_backend=backend, rank=rank, world_size=world, timeout=timeout)
        torch.manual_seed(config.seed)
        model = build_model(config.model)
        self.module = model
        self.policy = SchedulePolicy(config.schedule_policy, model.prompt_feature_dim)
        reference = frozen_copy(model).to(compute_device()) if config.algo.kl_beta > 0 else None
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=theta_optimizer(model, config.algo),
                                               config=deepspeed_config(config))
        reduce = _average_grads if world > 1 else None
        self.learner = Learner(self.engine, self.policy, config, theta_step=DeepSpeedStep(self.engine),
                               phi_step=make_phi_step(self.policy, config, reduce_grads=reduce), reference=reference)
        self.average = WeightAverage(config.algo.ema_decay) if config.algo.ema_decay and rank == 0 else None
        self.version = 0
        self.kept_state: tuple[int, dict | None] | None = None  # (weight version, full state): see _full_state

    def update(self, iteration: int, parts: list, sizes: list[int], versions: list[int], advantages: np.ndarray,
               usable: np.ndarray, trained: list[int]) -> dict:
        """parts: object refs of the trajectories per rollout batch, sizes: their sample counts, versions: the
        weight version of each. A rank fetches only the batches its share of the samples lies in, so with several
        ranks, or with PODS leaving samples out, no rank pulls every trajectory from the object store."""
        sample_version = np.repeat(versions, sizes)
        index, needed, local = rank_shard(sizes, usable, self.rank, self.world)
        traj = Trajectory.cat(ray.get([parts[b] for b in needed]))
        batch = ScoredBatch(traj.select(torch.from_numpy(local)), torch.from_numpy(advantages[index]),
                            torch.ones(len(index), dtype=torch.bool), trained)
        stale = sample_version < self.version
        metrics = self.learner.update(batch, iteration, stale=bool(stale[index].any()))
        self.version += 1
        if self.config.algo.ema_decay and metrics["train_theta"]:
            state = self._full_state(keep=True)  # collective under ZeRO-3: every rank calls it, rank 0 averages
            if self.average is not None:
                self.average.update(state)
        return {**metrics, "weight_version": self.version, "stale_samples": int(stale.sum()),
                "staleness": float(np.mean(self.version - 1 - sample_version)), "fetched_batches": len(needed)}

    def _full_state(self, keep: bool = False) -> dict[str, torch.Tensor] | None:
        """The full model state on rank 0 (a ZeRO-3 gather is a collective: every rank calls this). Below ZeRO-3
        the live tensors are returned uncopied: actor calls run one at a time, so nothing updates them meanwhile.
        keep: hold it for the next call at the same weight version (the moving average's gather after a theta
        update serves the publish that follows, so a ZeRO-3 learner gathers once per update, not twice). Every
        rank keeps and takes alike, so the collective stays matched."""
        import deepspeed

        kept, self.kept_state = self.kept_state, None
        if kept is not None and kept[0] == self.version:
            return kept[1]
        params = list(self.engine.module.parameters())
        gather = self.config.cluster.zero_stage == 3
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=gather):
            state = None if self.rank != 0 else {k: v.detach().clone() if gather else v.detach()
                                                 for k, v in self.engine.module.state_dict().items()}
        if keep:
            self.kept_state = (self.version, state)
        return state

    def weights(self) -> dict[str, np.ndarray] | None:
        """Rank 0's full message as numpy (for checks; every rank calls it, as for publish)."""
        state = self._full_state()
        return to_numpy(named_state(self.module, self.policy, state)) if self.rank == 0 else None

    def host_weight_sync(self) -> tuple[str, int]:
        """Rank 0 opens the broadcast group's rendezvous store; the others connect to the returned address."""
        address, self.sync_store = self._open_store()
        return address

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

    def average_weights(self) -> list | None:
        """Rank 0: [ref] to theta's moving average for an evaluation (None before its first theta iteration)."""
        return None if self.average is None or self.average.state is None else [ray.put(self.average.state)]

    def save_checkpoint(self, folder: str) -> None:
        """Every rank (the ZeRO-3 gather and DeepSpeed's save are collective): rank 0 writes both policies' whole
        weights as safetensors and phi's optimizer state; DeepSpeed writes theta's, each rank its partition, with
        the rank's RNG states as client state."""
        state = self._full_state()
        if self.rank == 0:
            save_weights(Path(folder), self.module, self.policy, state, self.average)
            save_optimizers(Path(folder), {"phi": self.learner.phi_step.optimizer})
        self.engine.save_checkpoint(str(Path(folder) / DEEPSPEED_DIR), tag=DEEPSPEED_TAG,
                                    client_state={"rng": rng_state()}, save_latest=False)

    def load_checkpoint(self, folder: str, version: int) -> None:
        """Every rank: theta and its optimizer through DeepSpeed, phi and its optimizer from rank 0's files."""
        client = load_deepspeed_checkpoint(self.engine, str(Path(folder) / DEEPSPEED_DIR))
        load_weights(Path(folder), None, self.policy, self.average)
        load_optimizers(Path(folder), {"phi": self.learner.phi_step.optimizer})
        set_rng_state(client["rng"])
        self.version, self.kept_state = version, None
