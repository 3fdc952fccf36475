"""The single-process trainer: the whole Co-GRPO loop in one process. It is the debugging path and the baseline
the distributed runtime must match, and it calls the same rollout and learner functions."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from cogrpo.cluster.plots import learned_schedule, plot_rewards, plot_schedule
from cogrpo.cluster.run_dir import RunDir
from cogrpo.data.geneval import read_metadata, resolve_metadata_path
from cogrpo.data.grid import image_grid
from cogrpo.data.prompts import training_records
from cogrpo.learner.advantages import group_advantages
from cogrpo.learner.checkpoint import save_checkpoint
from cogrpo.learner.cogrpo import Learner, ScoredBatch
from cogrpo.models.checkpoint import build_model
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.rewards.registry import build_reward, score_all
from cogrpo.rollout.collect import collect, group_ids
from cogrpo.rollout.evaluate import evaluate
from cogrpo.rollout.schedule import HandSchedule, Schedule, hand_knobs
from cogrpo.rollout.steps import step_plan


def schedule_for(config: Config, policy: SchedulePolicy, steps: int, sample_actions: bool) -> Schedule:
    """The hand schedule for model-only GRPO; otherwise the schedule policy around the hand schedule."""
    if config.algo.mode == "grpo":
        return HandSchedule(config.sampler, steps)
    return PolicySchedule(policy, hand_knobs(config.sampler, steps), sample_actions)


class LocalTrainer:
    def __init__(self, config: Config, run_dir: str | None = None, log: Callable[[str], None] = print):
        torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        self.config, self.log = config, log
        self.model = build_model(config.model)
        self.policy = SchedulePolicy(config.schedule_policy, self.model.prompt_feature_dim)
        self.learner = Learner(self.model, self.policy, config)
        self.rewards = [(build_reward(r), r.weight) for r in config.rewards]
        self.pool = read_metadata(resolve_metadata_path(config.train.prompts)) if config.train.prompts else None
        self.eval_sets = {name: read_metadata(resolve_metadata_path(path))
                          for name, path in config.train.eval_metadata.items()}
        self.run = RunDir.create(config, run_dir)

    def iterate(self, iteration: int) -> dict:
        config, algo = self.config, self.config.algo
        start = time.time()
        self.policy.decay_std(iteration)
        records = training_records(config.seed, iteration, algo.prompts_per_iteration, self.pool)
        plan = step_plan(algo.steps, config.sampler.steps, iteration, config.seed)
        schedule = schedule_for(config, self.policy, config.sampler.steps, sample_actions=True)
        traj = collect(self.model, schedule, [r["prompt"] for r in records], algo.group_size, config.sampler.steps,
                       plan, config.seed, iteration, config.sampler.batch_size, config.sampler.kind)
        rollout_s = time.time() - start
        images = self.model.decode_images(traj.tokens)
        metadata = [r for r in records for _ in range(algo.group_size)]
        terms = score_all(self.rewards, images, [r["prompt"] for r in metadata], metadata)
        groups = group_ids(len(records), algo.group_size).numpy()
        adv, usable = group_advantages(terms, groups, algo.adv_eps, algo.adv_clip)
        update_start = time.time()
        batch = ScoredBatch(traj, torch.from_numpy(adv), torch.from_numpy(usable), plan.trained)
        metrics = self.learner.update(batch, iteration)
        row = {"iteration": iteration + 1,
               **{f"reward/{reward.name}": float(np.mean(s[v])) for (reward, _), (s, v, _) in zip(self.rewards, terms)},
               "adv_std": float(adv[usable].std()) if usable.any() else 0.0,
               "rollout_s": round(rollout_s, 3), "update_s": round(time.time() - update_start, 3),
               "iteration_s": round(time.time() - start, 3), "images": len(images),
               "images_per_s": round(len(images) / rollout_s, 2), **metrics}
        self.run.log_metrics(row)
        return row

    def evaluate(self, iteration: int) -> list[dict]:
        config = self.config
        rows = []
        for steps in config.train.eval_steps:
            schedule = schedule_for(config, self.policy, steps, sample_actions=False)
            for split, records in self.eval_sets.items():
                result, _, images = evaluate(self.model, records, schedule, steps, config.seed,
                                             config.sampler.batch_size, config.eval.n_per_prompt, config.sampler.kind)
                row = {"iteration": iteration, "split": split, "steps": steps, **result}
                self.run.log_eval(row)
                rows.append(row)
                if split == next(iter(self.eval_sets)) and steps == config.sampler.steps:
                    self._sample_grid(iteration, records[:16], images[:16, 0])
        self._schedule_plot(iteration)
        return rows

    def _sample_grid(self, iteration: int, records: list[dict], images: np.ndarray) -> None:
        from cogrpo.rollout.evaluate import judge_images

        _, judgements = judge_images(records, [im[None] for im in images])
        grid = image_grid(images, [r["prompt"] for r in records], [bool(j.strict) for j in judgements])
        grid.save(self.run.path / f"samples_iter_{iteration:06d}.png")

    def _schedule_plot(self, iteration: int) -> None:
        steps = self.config.sampler.steps
        hand = hand_knobs(self.config.sampler, steps)
        records = next(iter(self.eval_sets.values()))
        feat = self.model.prompt_features(self.model.encode_prompts([r["prompt"] for r in records[:64]]))
        title = f"{self.config.algo.mode} at iteration {iteration}"
        plot_schedule(learned_schedule(self.policy, hand, feat), hand, self.run.path / "schedule.png", title)

    def checkpoint(self, iteration: int) -> None:
        save_checkpoint(self.run.path, iteration, self.model, self.policy, {"seed": self.config.seed})

    def train(self) -> list[dict]:
        config = self.config
        total = config.train.iterations
        self.log(f"run directory: {self.run.path}")
        if config.train.eval_at_start:
            self.log("iteration 0: " + self._eval_line(self.evaluate(0)))
        evals: list[dict] = []
        for iteration in range(total):
            row = self.iterate(iteration)
            rewards = "  ".join(f"{k[7:]} {v:.3f}" for k, v in row.items() if k.startswith("reward/"))
            phase = "+".join(p for p, on in (("theta", row["train_theta"]), ("phi", row["train_phi"])) if on)
            self.log(f"iteration {iteration + 1}/{total}  {rewards}  {row['images_per_s']:.1f} img/s  "
                     f"{row['iteration_s']:.1f} s  [{phase}]")
            done = iteration + 1
            if done % config.train.eval_every == 0 or done == total:
                evals = self.evaluate(done)
                self.log(f"iteration {done}: " + self._eval_line(evals))
                plot_rewards(self.run.metrics, self.run.evals, self.run.path / "reward_curve.png")
            if done % config.train.checkpoint_every == 0 or done == total:
                self.checkpoint(done)
        return evals

    @staticmethod
    def _eval_line(rows: list[dict]) -> str:
        return "  ".join(f"eval {r['split']}@{r['steps']} overall {r['overall']:.3f}" for r in rows)
