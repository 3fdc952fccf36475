"""The thin actors of the Ray runtime: rollout workers (theta and phi, sampling) and reward workers (scoring sample
batches); the learner ranks are cogrpo/cluster/ray/learner.py. Each builds what it holds through the one builder
and calls the same rollout and reward functions as the single-process runtime."""

from __future__ import annotations

import os

import numpy as np
import ray
import torch

from cogrpo.cluster.build import build_policies, build_rewards
from cogrpo.cluster.process import configure_compute
from cogrpo.cluster.ray.pool import WeightsMissing
from cogrpo.cluster.ray.flat import CudaMapped, IpcMessage, gpu_place, load_object
from cogrpo.cluster.ray.weights import BroadcastGroup, connect_store, named_state, to_numpy
from cogrpo.learner.averaging import weights_swapped_in
from cogrpo.models.interface import compute_device
from cogrpo.proto.config import Config
from cogrpo.proto.errors import InputError
from cogrpo.rewards.registry import score_one
from cogrpo.rollout.collect import evaluate
from cogrpo.rollout.schedule import rollout_schedule, schedule_for
from cogrpo.rollout.steps import StepPlan


def reports_input_errors(cls: type) -> type:
    """`cls` as an actor whose constructor's InputError (a missing checkpoint, say) is raised again by `ready()`:
    Ray reports a failed constructor only as ActorDiedError text, while a method's exception reaches the driver
    as itself, to be shown as one line."""

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

    def incarnation(self) -> tuple[str, int]:
        """(node id, process id): it changes when Ray restarts the actor, which is how the driver counts restarts."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def join_weight_sync(self, host: str, port: int, rank: int, world: int) -> None:
        """Join the broadcast group (learner rank 0 is its rank 0 and hosts the store). Collective."""
        timeout = self.config.cluster.timeout_s
        store = self.sync_store if rank == 0 else connect_store(host, port, timeout)
        self.sync = BroadcastGroup(store, rank, world, ray.util.get_node_ip_address(), timeout)

    def gpu_place(self) -> tuple[str, tuple[str, ...]] | None:
        return gpu_place()


class RolloutWorker(Actor):
    """Holds theta and phi; generates batches tagged with its weight version, and decodes evaluations."""

    def __init__(self, config: Config):
        configure_compute(config.threads)
        self.config = config
        device = compute_device()
        # on a GPU the learner trains in bf16 (deepspeed_config), so its published weights are bf16 too
        policies = build_policies(config, device, torch.bfloat16 if device.type == "cuda" else None)
        self.family, self.model, self.policy = policies.family, policies.model, policies.policy
        self.version: int | None = None  # no weights from the learner yet
        self.sync: BroadcastGroup | None = None  # joined at start; a restarted process is in no group
        self.cuda = CudaMapped()

    def weight_version(self) -> int | None:
        return self.version

    def _check_weights(self, version: int) -> None:
        if self.version != version:
            raise WeightsMissing(f"rollout worker holds weight version {self.version}, the driver expects {version}")

    def load_weights(self, message: list | IpcMessage) -> int:
        """Object store ([ref] to the message) or CUDA IPC: swap in published weights. Actor calls run one at a
        time, so weights only change between batches."""
        into = named_state(self.model, self.policy)
        self.version = self.cuda.load(message, into) if isinstance(message, IpcMessage) else load_object(message, into)
        return self.version

    def receive_weights(self) -> int:
        """Collective transport: the broadcast lands in the live tensors (state_dict views), between batches."""
        if self.sync is None:
            raise WeightsMissing("this rollout worker is in no broadcast group: Ray restarted it")
        self.version = self.sync.receive(named_state(self.model, self.policy))
        return self.version

    def generate(self, prompts: list[str], plan: StepPlan, seed: int, iteration: int, version: int):
        """(trajectory, samples, weight version): three returns, so the driver can wait on the small one."""
        self._check_weights(version)
        schedule = rollout_schedule(self.config, self.family, self.policy, iteration)
        traj = self.family.sample(self.model, prompts, schedule, plan, seed)
        return traj, self.family.decode(self.model, traj), self.version

    def evaluate(self, records: list[dict], steps: int, average: list | None, version: int):
        """((summary, rows, knobs, preview), then each batch of sampler.batch_size samples as a return of its own, for
        the driver to pass on to the reward workers unseen). average: [ref] to the learner's moving average of theta,
        evaluated in place of the live weights."""
        self._check_weights(version)
        config = self.config
        schedule = schedule_for(config, self.family, self.policy, steps, sample_actions=False)
        with weights_swapped_in(self.model, ray.get(average[0]) if average else None):
            result = evaluate(self.family, self.model, schedule, records, steps, config.seed,
                              config.sampler.batch_size, config.eval.n_per_prompt)
        return ((result.summary, result.rows, result.knobs, result.preview), *result.batches)

    def weights(self) -> dict[str, np.ndarray]:
        return to_numpy(named_state(self.model, self.policy))


class RewardWorker(Actor):
    def __init__(self, config: Config):
        configure_compute(config.threads)
        self.rewards = build_rewards(config)

    def score(self, term: int, samples, prompts: list[str], metadata: list[dict]):
        """One reward term's (scores, valid): a call per term, so a hang or a failure is charged to its reward."""
        return score_one(self.rewards[term][0], samples, prompts, metadata)
