"""The single-process trainer: the whole Co-GRPO loop in one process. It is the debugging path and the baseline
the distributed runtime must match, and it calls the same rollout and learner functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cogrpo.cluster.plots import learned_schedule
from cogrpo.cluster.trainer import Trainer, rollout_schedule, schedule_for
from cogrpo.learner.averaging import WeightAverage, weights_swapped_in
from cogrpo.learner.checkpoint import load_optimizers, load_weights, save_optimizers, save_weights
from cogrpo.learner.cogrpo import Learner, ScoredBatch
from cogrpo.models.checkpoint import build_model
from cogrpo.models.interface import compute_device, configure_compute
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.rewards.registry import build_reward, score_in_batches
from cogrpo.rollout.collect import collect, repeat_each
from cogrpo.rollout.evaluate import evaluate
from cogrpo.rollout.schedule import hand_knobs
from cogrpo.rollout.steps import StepPlan


class LocalTrainer(Trainer):
    def start_runtime(self) -> None:
        config = self.config
        configure_compute(config.threads)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model).to(compute_device())
        self.policy = SchedulePolicy(config.schedule_policy, self.model.prompt_feature_dim)
        self.learner = Learner(self.model, self.policy, config)
        self.average = WeightAverage(config.algo.ema_decay) if config.algo.ema_decay else None
        self.rewards = [(build_reward(r), r.weight) for r in config.rewards]

    def rollout_and_score(self, iteration: int, records: list[dict], plan: StepPlan):
        config, algo = self.config, self.config.algo
        schedule = rollout_schedule(config, self.policy, iteration)
        traj = collect(self.model, schedule, [r["prompt"] for r in records], algo.samples_per_prompt,
                       config.sampler.steps, plan, config.seed, iteration, config.sampler.batch_size,
                       config.sampler.kind)
        metadata = repeat_each(records, algo.samples_per_prompt)
        images = self.model.decode_images(traj.tokens)
        return traj, score_in_batches(self.rewards, images, metadata, config.sampler.batch_size)  # as Ray's are

    def update(self, iteration, handle, advantages, usable, plan):
        batch = ScoredBatch(handle, torch.from_numpy(advantages), torch.from_numpy(usable), plan.trained)
        metrics = self.learner.update(batch, iteration)
        if self.average is not None and metrics["train_theta"]:
            self.average.update(self.model.state_dict())
        return metrics

    def evaluate_split(self, records: list[dict], steps: int) -> tuple[dict, np.ndarray, list]:
        config = self.config
        schedule = schedule_for(config, self.policy, steps, sample_actions=False)
        with weights_swapped_in(self.model, self.average.state if self.average else None):
            result, _, images = evaluate(self.model, records, schedule, steps, config.seed,
                                         config.sampler.batch_size, config.eval.n_per_prompt, config.sampler.kind)
        terms = score_in_batches(self.rewards, images.reshape(-1, *images.shape[2:]),
                                 repeat_each(records, config.eval.n_per_prompt), config.sampler.batch_size)
        return result, images[:16], terms

    def learned_schedule(self, steps: int, prompts: list[str]) -> torch.Tensor:
        feat = self.model.prompt_features_cpu(self.model.encode_prompts(prompts))
        return learned_schedule(self.policy, hand_knobs(self.config.sampler, steps), feat)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"theta": self.learner.theta_step.optimizer, "phi": self.learner.phi_step.optimizer}

    def save_learner(self, folder: Path) -> None:
        save_weights(folder, self.model, self.policy, average=self.average)
        save_optimizers(folder, self.optimizers())

    def load_learner(self, folder: Path, state: dict) -> None:
        load_weights(folder, self.model, self.policy, average=self.average)
        load_optimizers(folder, self.optimizers())
