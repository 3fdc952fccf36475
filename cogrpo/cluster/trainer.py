"""The training loop both runtimes share: prompts, step plans, advantages, logging, evaluation cadence, plots,
checkpoints and resuming, reward-fault accounting. A runtime decides only where rollouts, scoring, updates and
evaluations run, and how its learner state is saved."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from cogrpo.cluster.metrics import MetricsSink
from cogrpo.cluster.plots import plot_rewards, plot_schedule
from cogrpo.cluster.run_dir import RunDir, run_path
from cogrpo.data.geneval import read_metadata, resolve_metadata_path
from cogrpo.data.grid import image_grid
from cogrpo.data.prompts import training_records
from cogrpo.learner.advantages import (down_sample, group_advantages, in_scorable_groups, judged_by_all,
                                      select_groups)
from cogrpo.learner.checkpoint import (checkpoints_root, commit_checkpoint, latest_checkpoint, load_rng, mark_latest,
                                       read_state, save_rng, staging_folder)
from cogrpo.learner.cogrpo import samples_schedule_actions
from cogrpo.models.schedule_policy import PolicySchedule, SchedulePolicy
from cogrpo.proto.config import Config
from cogrpo.proto.errors import InputError
from cogrpo.rewards.registry import mask_unscored, reward_stats
from cogrpo.rollout.collect import group_ids
from cogrpo.rollout.evaluate import judge_images
from cogrpo.rollout.schedule import HandSchedule, Schedule, hand_knobs
from cogrpo.rollout.steps import StepPlan, step_plan


def schedule_for(config: Config, policy: SchedulePolicy, steps: int, sample_actions: bool) -> Schedule:
    """The hand schedule for model-only GRPO; otherwise the schedule policy around the hand schedule."""
    if config.algo.mode == "grpo":
        return HandSchedule(config.sampler, steps)
    return PolicySchedule(policy, hand_knobs(config.sampler, steps), sample_actions)


def rollout_schedule(config: Config, policy: SchedulePolicy, iteration: int) -> Schedule:
    """The schedule an iteration's rollouts decode with, in either runtime: phi's std as of this iteration, its
    actions sampled unless phi is frozen and `algo.frozen_schedule` asks for its mean action."""
    policy.decay_std(iteration)
    return schedule_for(config, policy, config.sampler.steps, samples_schedule_actions(config.algo, iteration))


def fault_stats(config: Config, terms, groups: np.ndarray) -> dict:
    """`reward_failures`: per reward, the samples it could not score (invalid, NaN or a failed call);
    `dropped_groups`: prompt groups left with fewer than two samples every reward scored, so out of the update."""
    scored = in_scorable_groups(judged_by_all(terms), groups)
    return {"reward_failures": {r.name: int((~valid).sum()) for r, (_, valid, _) in zip(config.rewards, terms)},
            "dropped_groups": len(np.unique(groups)) - len(np.unique(groups[scored]))}


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its run directory and the checkpoint with that checkpoint's driver state
    (checkpoint None: the run has none yet, so it starts over in its directory)."""

    run: Path
    checkpoint: Path | None
    state: dict


def resume_point(config: Config, run_dir: str | None, resume: str | None) -> ResumePoint | None:
    """`resume`: None (a new run), "auto" (the run's latest complete checkpoint, if any) or a checkpoint folder of
    the run. Checked before any worker starts: a run with nothing left to do, or a checkpoint of the other
    runtime (their learner states differ), fails at once."""
    if resume is None:
        return None
    if not (run_dir or config.train.run_dir):
        raise InputError("--resume needs the run to continue: --run-dir (or train.run_dir)")
    path = run_path(config, run_dir)
    checkpoint = latest_checkpoint(path) if resume == "auto" else Path(resume)
    if checkpoint is None:
        return ResumePoint(path, None, {})
    if checkpoint.resolve().parent != checkpoints_root(path).resolve():
        raise InputError(f"--resume {resume}: not a checkpoint folder of run directory {path} "
                         "(<run>/checkpoints/iter_NNNNNN)")
    state = read_state(checkpoint)
    if state.get("runtime") != config.runtime:
        raise InputError(f"checkpoint {checkpoint} was written by runtime {state.get('runtime')}, not "
                         f"{config.runtime}: resume it with --set runtime={state.get('runtime')}")
    if state["iteration"] >= config.train.iterations:
        raise InputError(f"nothing to do: checkpoint {checkpoint} is at iteration {state['iteration']} and "
                         f"train.iterations is {config.train.iterations} (ask for more with --set "
                         "train.iterations=N)")
    return ResumePoint(path, checkpoint, state)


def read_prompt_sets(config: Config) -> tuple[list[dict] | None, dict[str, list[dict]]]:
    """The RL prompt pool (None: the generated train split) and the evaluation sets, validated."""
    pool = read_metadata(resolve_metadata_path(config.train.prompts)) if config.train.prompts else None
    return pool, {name: read_metadata(resolve_metadata_path(path)) for name, path in config.train.eval_metadata.items()}


class Trainer(ABC):
    last_checkpoint: Path | None = None  # the newest complete checkpoint this run wrote or resumed from

    def __init__(self, config: Config, run_dir: str | None = None, log: Callable[[str], None] = print,
                 resume: str | None = None):
        """resume: None for a new run (its directory must be new or empty), "auto" or a checkpoint folder to
        continue the run in `run_dir` (see `resume_point`)."""
        self.config, self.log = config, log
        # the cheap checks first: a bad prompt file, or a run with nothing left to do, fails before workers start
        self.pool, self.eval_sets = read_prompt_sets(config)
        self.resumed = resume_point(config, run_dir, resume)
        self.start = 0  # the first iteration this process runs
        self.start_runtime()
        # before the run directory, and closed if that is refused: a port in use leaves nothing behind
        self.metrics = MetricsSink(config.metrics, ray_export=config.runtime == "ray")
        try:
            self.run = self._open_run(run_dir)
        except BaseException:
            self.metrics.close()
            raise

    def _open_run(self, run_dir: str | None) -> RunDir:
        """A new run's directory, or a resumed run's once its learner state has loaded (a checkpoint that does not
        load leaves the directory as it was)."""
        point = self.resumed
        if point is None:
            return RunDir.create(self.config, run_dir)
        if point.checkpoint is None:
            return RunDir.reopen(self.config, point.run, through=-1)
        self.restore(point)
        return RunDir.reopen(self.config, point.run, through=self.start)

    # ---- what a runtime provides ----
    @abstractmethod
    def start_runtime(self) -> None:
        """Bring up the models and workers: after the input checks, before the run directory and any resume."""

    @abstractmethod
    def rollout_and_score(self, iteration: int, records: list[dict], plan: StepPlan):
        """Generate G samples per record under the current policies and score them: (handle, terms), where handle
        is whatever `update` needs to find the trajectories and terms are (scores, valid, weight) per reward."""

    @abstractmethod
    def update(self, iteration: int, handle, advantages: np.ndarray, usable: np.ndarray, plan: StepPlan) -> dict:
        """One learner update; returns its metrics."""

    @abstractmethod
    def evaluate_split(self, records: list[dict], steps: int) -> tuple[dict, np.ndarray, list]:
        """Decode `config.eval.n_per_prompt` images per record with the current policies' mean schedule: their
        GenEval summary, the images of the first 16 records (16, n, H, W, 3), and every reward's terms over all
        the images (record-major), scored as rollouts are."""

    @abstractmethod
    def learned_schedule(self, steps: int, prompts: list[str]) -> torch.Tensor:
        """(steps, len(KNOBS)): the schedule policy's mean knobs per step, for the plot."""

    @abstractmethod
    def save_learner(self, folder: Path) -> None:
        """Write the learner's parts of a checkpoint (weights, optimizer states) into the staging folder."""

    @abstractmethod
    def load_learner(self, folder: Path, state: dict) -> None:
        """Load what `save_learner` wrote; state is the checkpoint's driver state."""

    def runtime_metrics(self) -> dict:
        return {}

    def runtime_state(self) -> dict:
        """What the runtime's driver adds to a checkpoint's state.json."""
        return {}

    # ---- checkpoints ----
    def save_checkpoint(self, iteration: int) -> None:
        folder = staging_folder(self.run.path, iteration)
        self.save_learner(folder)
        save_rng(folder)
        self.last_checkpoint = commit_checkpoint(self.run.path, iteration, {
            "seed": self.config.seed, "runtime": self.config.runtime, **self.runtime_state()})

    def restore(self, point: ResumePoint) -> None:
        self.last_checkpoint = point.checkpoint
        self.load_learner(point.checkpoint, point.state)
        load_rng(point.checkpoint)
        mark_latest(point.checkpoint)  # resuming an older checkpoint: `latest` follows the run's new course
        self.start = point.state["iteration"]

    # ---- the loop ----
    def iteration_inputs(self, iteration: int) -> tuple[list[dict], StepPlan]:
        """An iteration's prompts and step plan: functions of (seed, iteration) alone, so a runtime may compute
        them ahead (one-step-off) and a resumed run needs no prompt-sampler state."""
        config, algo = self.config, self.config.algo
        return (training_records(config.seed, iteration, algo.rollout_prompts, self.pool),
                step_plan(algo.steps, config.sampler.steps, iteration, config.seed))

    def iterate(self, iteration: int) -> dict:
        config, algo = self.config, self.config.algo
        start = time.time()
        records, plan = self.iteration_inputs(iteration)
        handle, terms = self.rollout_and_score(iteration, records, plan)
        rollout_s = time.time() - start
        terms = mask_unscored(terms)
        groups = group_ids(len(records), algo.samples_per_prompt).numpy()
        trained = terms if algo.rollouts_per_prompt is None else down_sample(terms, groups, algo.group_size)
        if algo.candidate_prompts is not None:
            trained = select_groups(trained, groups, algo.prompts_per_iteration)
        adv, usable = group_advantages(trained, groups, algo.adv_eps, algo.adv_clip)
        update_start = time.time()
        metrics = self.update(iteration, handle, adv, usable, plan)
        row = {"iteration": iteration + 1, **reward_stats(config.rewards, terms),
               **fault_stats(config, terms, groups),
               "adv_std": float(adv[usable].std()) if usable.any() else 0.0,
               "rollout_s": round(rollout_s, 3), "update_s": round(time.time() - update_start, 3),
               "iteration_s": round(time.time() - start, 3), "images": len(groups),
               "images_per_s": round(len(groups) / rollout_s, 2), **metrics, **self.runtime_metrics()}
        self.run.log_metrics(row)
        self.metrics.record(row)
        return row

    def evaluate(self, iteration: int) -> list[dict]:
        config = self.config
        rows = []
        first = next(iter(self.eval_sets))
        for steps in config.train.eval_steps:
            for split, records in self.eval_sets.items():
                result, images, terms = self.evaluate_split(records, steps)
                row = {"iteration": iteration, "split": split, "steps": steps, **result,
                       **reward_stats(config.rewards, mask_unscored(terms))}
                self.run.log_eval(row)
                self.metrics.record_eval(row)
                rows.append(row)
                if split == first and steps == config.sampler.steps:
                    self._sample_grid(iteration, records[:16], images[:, 0])
        steps = config.sampler.steps
        prompts = [r["prompt"] for r in self.eval_sets[first][:64]]
        learned = self.learned_schedule(steps, prompts)
        self.metrics.record_schedule(learned)
        plot_schedule(learned, hand_knobs(config.sampler, steps), self.run.path / "schedule.png",
                      f"{config.algo.mode} at iteration {iteration}")
        return rows

    def _sample_grid(self, iteration: int, records: list[dict], images: np.ndarray) -> None:
        _, judgements = judge_images(records, [im[None] for im in images])
        grid = image_grid(images, [r["prompt"] for r in records], [bool(j.strict) for j in judgements])
        grid.save(self.run.path / f"samples_iter_{iteration:06d}.png")

    def train(self) -> list[dict]:
        """The loop. On a terminal a progress bar shows reward, throughput and staleness; elsewhere (CI, job logs)
        one line per iteration."""
        config = self.config
        total = config.train.iterations
        bar = tqdm(total=total, initial=self.start, desc=config.algo.mode, unit="it", disable=None,
                   dynamic_ncols=True)
        say = self.log if bar.disable else bar.write
        say(f"run directory: {self.run.path}")
        if self.start:
            say(f"resumed from {self.resumed.checkpoint} (iteration {self.start})")
        if self.metrics.url:
            say(f"metrics: {self.metrics.url}")
        if config.train.eval_at_start and self.start == 0:
            say("iteration 0: " + self._eval_line(self.evaluate(0)))
        evals: list[dict] = []
        for iteration in range(self.start, total):
            row = self.iterate(iteration)
            if row["dropped_groups"]:
                say(f"warning: iteration {iteration + 1}: {row['dropped_groups']} of "
                    f"{config.algo.rollout_prompts} prompt groups dropped (fewer than two samples every "
                    f"reward could score; unscored samples per reward: {row['reward_failures']})")
            rewards = "  ".join(f"{k[7:]} {v:.3f}" for k, v in row.items() if k.startswith("reward/"))
            phase = "+".join(p for p, on in (("theta", row.get("train_theta")), ("phi", row.get("train_phi"))) if on)
            extra = f"  staleness {row['staleness']:.1f}" if "staleness" in row else ""
            if bar.disable:
                say(f"iteration {iteration + 1}/{total}  {rewards}  {row['images_per_s']:.1f} img/s  "
                    f"{row['iteration_s']:.1f} s{extra}  [{phase}]")
            else:
                bar.set_postfix_str(f"{rewards}  {row['images_per_s']:.1f} img/s{extra}  [{phase}]", refresh=False)
                bar.update()
            done = iteration + 1
            if done % config.train.eval_every == 0 or done == total:
                evals = self.evaluate(done)
                say(f"iteration {done}: " + self._eval_line(evals))
                plot_rewards(self.run.metrics, self.run.evals, self.run.path / "reward_curve.png")
            if done % config.train.checkpoint_every == 0 or done == total:
                self.save_checkpoint(done)
        bar.close()
        return evals

    @staticmethod
    def _eval_line(rows: list[dict]) -> str:
        """Each split's GenEval overall (meaningful on the shapes world) and its mean rewards (on any model)."""
        return "  ".join(f"eval {r['split']}@{r['steps']} overall {r['overall']:.3f}"
                         + "".join(f" {k[7:]} {v:.3f}" for k, v in r.items() if k.startswith("reward/"))
                         for r in rows)
