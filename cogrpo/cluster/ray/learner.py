"""A learner rank as a Ray actor: DeepSpeed (ZeRO stage from the config, gloo on CPU, NCCL on GPU) for theta, a
replicated schedule policy for phi, and the shared Learner math. Rank 0 publishes the weights, keeps theta's moving
average and writes the whole weights of a checkpoint; every rank writes its DeepSpeed partition."""

from __future__ import annotations

import datetime
import os
import pickle
from pathlib import Path

import numpy as np
import ray
import torch

from cogrpo.cluster.build import build_learner, build_policies
from cogrpo.cluster.compat import skip_deepspeed_op_probes, weights_only_deepspeed_reads
from cogrpo.cluster.process import configure_compute
from cogrpo.cluster.ray.actors import Actor
from cogrpo.cluster.ray.flat import CudaShare, IpcMessage, ObjectMessage
from cogrpo.cluster.ray.weights import connect_store, host_store, named_state, pin_gloo_to, to_numpy
from cogrpo.learner.averaging import WeightAverage
from cogrpo.learner.checkpoint import (load_optimizers, load_weights, rng_state, save_optimizers, save_weights,
                                      set_rng_state)
from cogrpo.learner.learner import Loss, ScoredBatch, frozen_copy, loss_parts, make_phi_step, theta_optimizer
from cogrpo.learner.ranks import Ranks
from cogrpo.models.interface import compute_device
from cogrpo.proto.config import Config
from cogrpo.proto.errors import InputError, last_line
from cogrpo.proto.layout import CheckpointLayout
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.steps import StepPlan

DEEPSPEED_TAG = "state"


def load_deepspeed_checkpoint(engine, path: str) -> dict:
    """engine.load_checkpoint with every file read by torch.load(weights_only=True), so a tampered checkpoint
    cannot run code. Returns the client state saved with it."""
    try:
        with weights_only_deepspeed_reads(engine):
            loaded, client = engine.load_checkpoint(path, tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)
    except pickle.UnpicklingError as exc:
        raise InputError(f"DeepSpeed checkpoint {path} holds more than tensors and plain data "
                         f"({last_line(exc)})") from None
    if loaded is None:
        raise InputError(f"no DeepSpeed checkpoint in {path}")
    return client


def deepspeed_config(config: Config) -> dict:
    """The engine's settings; ZeRO-Offload steps our torch AdamW on the host (DeepSpeed's own CPU Adam is a
    compiled op, which nothing here builds)."""
    zero: dict = {"stage": config.cluster.zero_stage}
    if config.cluster.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
            "gradient_clipping": config.algo.grad_clip, "zero_optimization": zero,
            "zero_force_ds_cpu_optimizer": False, "bf16": {"enabled": torch.cuda.is_available()},
            "steps_per_print": 10**9}


class DeepSpeedStep:
    """The theta step through a DeepSpeed engine (ZeRO partitioning, gradient averaging and clipping inside)."""

    def __init__(self, engine):
        self.engine, self.optimizer = engine, engine.optimizer

    def __call__(self, loss: Loss) -> float:
        parts = loss_parts(loss)
        for i, part in enumerate(parts):  # the parts' gradients accumulate; the last one's backward reduces them
            self.engine.set_gradient_accumulation_boundary(i == len(parts) - 1)
            self.engine.backward(part())
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


def _sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor's elementwise sum over the learner group (on the compute device, as NCCL needs)."""
    total = tensor.to(compute_device(), copy=True)
    torch.distributed.all_reduce(total)
    return total.to(tensor.device)


def usable_batches(sizes: list[int], usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rollout batches of `sizes` a learner rank fetches, and their samples' indices in the iteration: every
    batch holding a usable sample (each rank trains its share of minibatches drawn from all of them, as one process
    does), and batch 0, whose seed the learner's draws derive from as in one process, usable samples or not."""
    starts = np.cumsum([0, *sizes])
    needed = np.flatnonzero([b == 0 or usable[starts[b]: starts[b + 1]].any() for b in range(len(sizes))])
    return needed, np.concatenate([np.arange(starts[b], starts[b + 1]) for b in needed])


def rank_metrics(ranks: list[dict]) -> dict:
    """The run's metrics from every rank's: a rank's means are its share's sums over the ranks' mean count
    (learner/ranks.py), so their plain mean over ranks is the whole minibatch's; the rest (counts of the whole
    batch, flags, versions, gradient norms after the all-reduce) is the same on every rank, and rank 0's is kept."""
    return {key: sum(rank[key] for rank in ranks) / len(ranks) if isinstance(value, float) else value
            for key, value in ranks[0].items()}


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
        skip_deepspeed_op_probes()  # nothing JIT-compiles at init_distributed
        deepspeed.init_distributed(dist_backend=backend, rank=rank, world_size=world, timeout=timeout)
        policies = build_policies(config)
        self.module, self.policy = policies.model, policies.policy
        reference = frozen_copy(self.module).to(compute_device()) if config.algo.kl_beta > 0 else None
        self.engine, *_ = deepspeed.initialize(model=self.module, optimizer=theta_optimizer(self.module, config.algo),
                                               config=deepspeed_config(config))
        reduce = _average_grads if world > 1 else None
        self.learner = build_learner(config, policies, self.engine, DeepSpeedStep(self.engine),
                                     make_phi_step(self.policy, config, reduce_grads=reduce), reference,
                                     Ranks(rank, world, _sum_over_ranks))
        self.average = WeightAverage(config.algo.ema_decay) if config.algo.ema_decay and rank == 0 else None
        self.version = 0
        self.kept_state: tuple[int, dict | None] | None = None  # (weight version, full state): see _full_state
        self.cuda_share = CudaShare()  # cuda_ipc's flat buffers, made at its first publish

    def update(self, iteration: int, parts: list, sizes: list[int], versions: list[int], advantages: np.ndarray,
               usable: np.ndarray, plan: StepPlan) -> dict:
        """parts: object refs of the trajectories per rollout batch, sizes: their sample counts, versions: the
        weight version of each. Every rank takes the batches holding usable samples (PODS may leave some out) and
        trains its share of each minibatch; the ranks' metrics combine with `rank_metrics`."""
        sample_version = np.repeat(versions, sizes)
        needed, rows = usable_batches(sizes, usable)
        traj = Trajectory.cat(ray.get([parts[b] for b in needed]))
        batch = ScoredBatch(traj, torch.from_numpy(advantages[rows]), torch.from_numpy(usable[rows]),
                            plan.trained_mask(len(usable))[rows])
        stale = sample_version < self.version
        metrics = self.learner.update(batch, iteration, stale=bool(stale[usable].any()))
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

    def publish(self, transport: str) -> list | IpcMessage | None:
        """Every rank calls this (the ZeRO-3 gather is collective). Rank 0 then broadcasts the versioned message
        (`collective`; returns None), packs it into its shared GPU buffers and returns their handles (`cuda_ipc`),
        or puts it in the object store and returns [ref] (`object_store`, wrapped so
        the driver passes the reference on without resolving it). The object store serves whatever
        cluster.weight_sync says: a restarted rollout worker cannot join the broadcast group."""
        state = self._full_state()
        if self.rank != 0:
            return None
        message = named_state(self.module, self.policy, state)
        if transport == "collective":
            self.sync.send(self.version, message)
            return None
        if transport == "cuda_ipc":
            return self.cuda_share.publish(self.version, message)
        return [ray.put(ObjectMessage.of(self.version, message))]

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
        self.engine.save_checkpoint(str(CheckpointLayout(folder).deepspeed), tag=DEEPSPEED_TAG,
                                    client_state={"rng": rng_state()}, save_latest=False)

    def load_checkpoint(self, folder: str, version: int) -> None:
        """Every rank: theta and its optimizer through DeepSpeed, phi and its optimizer from rank 0's files."""
        client = load_deepspeed_checkpoint(self.engine, str(CheckpointLayout(folder).deepspeed))
        load_weights(Path(folder), None, self.policy, self.average)
        load_optimizers(Path(folder), {"phi": self.learner.phi_step.optimizer})
        set_rng_state(client["rng"])
        self.version, self.kept_state = version, None
