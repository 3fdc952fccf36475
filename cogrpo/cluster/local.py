"""The single-process runtime: the whole loop in one process. It is the debugging path and the baseline the Ray
runtime must match, and it calls the same rollout, reward and learner functions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cogrpo.cluster.build import build_learner, build_policies, build_rewards
from cogrpo.cluster.loop import EvalResult, Rollout
from cogrpo.cluster.process import configure_compute
from cogrpo.learner.averaging import WeightAverage, weights_swapped_in
from cogrpo.learner.checkpoint import load_optimizers, load_weights, save_optimizers, save_weights
from cogrpo.learner.learner import ScoredBatch
from cogrpo.models.interface import compute_device
from cogrpo.proto.config import Config
from cogrpo.proto.messages import Trajectory
from cogrpo.rewards.registry import Terms, score_in_batches
from cogrpo.rollout.batching import repeat_each
from cogrpo.rollout.collect import collect, evaluate, join
from cogrpo.rollout.schedule import rollout_schedule, schedule_for
from cogrpo.rollout.steps import StepPlan


@dataclass
class LocalSamples:
    """A rollout held in this process: its trajectories, the decoded samples, the weight version that made them,
    and their scores once computed."""

    traj: Trajectory
    samples: np.ndarray | list
    version: int
    terms: Terms | None = None


class LocalRuntime:
    def __init__(self, config: Config):
        self.config = config

    def start(self) -> None:
        config = self.config
        configure_compute(config.threads)
        policies = build_policies(config, compute_device())
        self.family, self.model, self.policy = policies.family, policies.model, policies.policy
        self.learner = build_learner(config, policies)
        self.average = WeightAverage(config.algo.ema_decay) if config.algo.ema_decay else None
        self.rewards = build_rewards(config)
        self.version = 0  # updates so far: a rollout made before the latest one is stale

    def rollout(self, iteration: int, records: list[dict], plan: StepPlan) -> Rollout[LocalSamples]:
        config = self.config
        schedule = rollout_schedule(config, self.family, self.policy, iteration)
        traj = collect(self.family, self.model, schedule, [r["prompt"] for r in records],
                       config.algo.samples_per_prompt, plan, config.seed, iteration, config.sampler.batch_size)
        samples = LocalSamples(traj, self.family.decode(self.model, traj), self.version)
        return Rollout(iteration, records, plan, traj.batch_size, samples)

    def score(self, rollout: Rollout[LocalSamples]) -> Terms:
        held = rollout.handle
        if held.terms is None:  # in batches of sampler.batch_size, as Ray's reward workers score
            metadata = repeat_each(rollout.records, self.config.algo.samples_per_prompt)
            held.terms = score_in_batches(self.rewards, held.samples, metadata, self.config.sampler.batch_size)
        return held.terms

    def update(self, iteration: int, rollout: Rollout[LocalSamples], advantages: np.ndarray,
               usable: np.ndarray) -> dict:
        held = rollout.handle
        batch = ScoredBatch(held.traj, torch.from_numpy(advantages), torch.from_numpy(usable),
                            rollout.plan.trained_mask(rollout.samples))
        stale = held.version < self.version
        metrics = self.learner.update(batch, iteration, stale=stale)
        self.version += 1
        if self.average is not None and metrics["train_theta"]:
            self.average.update(self.model.state_dict())
        return {**metrics, "weight_version": self.version, "stale_samples": rollout.samples if stale else 0,
                "staleness": float(self.version - 1 - held.version)}

    def publish(self) -> dict:
        return {}  # the sampler is the learner's own model

    def evaluate(self, records: list[dict], steps: int) -> EvalResult:
        config, n = self.config, self.config.eval.n_per_prompt
        schedule = schedule_for(config, self.family, self.policy, steps, sample_actions=False)
        with weights_swapped_in(self.model, self.average.state if self.average else None):
            result = evaluate(self.family, self.model, schedule, records, steps, config.seed,
                              config.sampler.batch_size, n)
        terms = score_in_batches(self.rewards, join(result.batches), repeat_each(records, n), config.sampler.batch_size)
        return EvalResult(result.summary, result.rows, result.preview, terms, result.knobs)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"theta": self.learner.theta_step.optimizer, "phi": self.learner.phi_step.optimizer}

    def save(self, folder: Path) -> None:
        save_weights(folder, self.model, self.policy, average=self.average)
        save_optimizers(folder, self.optimizers())

    def load(self, folder: Path, state: dict) -> None:
        load_weights(folder, self.model, self.policy, average=self.average)
        load_optimizers(folder, self.optimizers())
        self.version = state.get("weight_version", state["iteration"])

    def state(self) -> dict:
        return {"weight_version": self.version}

    def fault_counts(self) -> dict:
        return {}

    def close(self) -> None:
        pass
