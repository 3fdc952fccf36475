"""The one training loop, for every runtime. `TrainingLoop.fit` reads top to bottom as the data flows: prompts ->
rollouts -> rewards -> advantages -> update -> publish -> evaluate -> checkpoint. A runtime (cogrpo/cluster/local.py
in one process, cogrpo/cluster/ray/driver.py on Ray actors) decides only where each of those calls runs."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, Iterator, Protocol, TypeVar

import numpy as np
import torch
from tqdm import tqdm

from cogrpo.cluster.metrics import MetricsSink
from cogrpo.cluster.plots import plot_rewards, plot_schedule
from cogrpo.cluster.run_dir import ResumePoint, RunDir, resume_point
from cogrpo.data.grid import image_grid
from cogrpo.data.prompts import training_records
from cogrpo.data.records import read_records
from cogrpo.learner.advantages import iteration_advantages
from cogrpo.learner.checkpoint import load_rng, save_rng
from cogrpo.proto.config import Config
from cogrpo.proto.errors import FaultError
from cogrpo.proto.family import Family
from cogrpo.proto.layout import mark_latest
from cogrpo.rewards.registry import Terms, mask_unscored, reward_stats
from cogrpo.rollout.steps import StepPlan, rollout_plan

Handle = TypeVar("Handle")


@dataclass
class Rollout(Generic[Handle]):
    """An iteration's rollouts, launched or done: its prompts and step plan, and where the runtime holds the
    samples (a trajectory in one process, the object references of its batches under Ray)."""

    iteration: int
    records: list[dict]
    plan: StepPlan
    samples: int
    handle: Handle


@dataclass
class EvalResult:
    """A split decoded with the schedule's mean action: the family's summary and per-sample rows, up to 16 records'
    first images (None for a family that makes no images), every reward's terms over all samples (record-major,
    scored as rollouts are) and the mean knobs applied per step."""

    summary: dict
    rows: list[dict]
    preview: np.ndarray | None
    terms: Terms
    knobs: torch.Tensor


class Runtime(Protocol):
    family: Family

    def start(self) -> None:
        """Bring up the models and workers: after the input checks, before the run directory and any resume."""

    def rollout(self, iteration: int, records: list[dict], plan: StepPlan) -> Rollout:
        """Launch the samples of `records` (each `algo.samples_per_prompt` times) under the current policies."""

    def score(self, rollout: Rollout) -> Terms:
        """(scores, valid, weight) per reward over the rollout's samples, once they are generated and scored."""

    def update(self, iteration: int, rollout: Rollout, advantages: np.ndarray, usable: np.ndarray) -> dict:
        """One learner update; its metrics."""

    def publish(self) -> dict:
        """The learner's weights to whatever samples; its metrics (`sync_s`), or none where nothing moves."""

    def evaluate(self, records: list[dict], steps: int) -> EvalResult: ...

    def save(self, folder: Path) -> None:
        """Write the learner's parts of a checkpoint (weights, optimizer states) into the staging folder."""

    def load(self, folder: Path, state: dict) -> None:
        """Load what `save` wrote; state is the checkpoint's driver state."""

    def state(self) -> dict:
        """What the runtime adds to a checkpoint's state.json."""

    def fault_counts(self) -> dict:
        """This iteration's fault counts (then reset)."""

    def close(self) -> None: ...


def read_prompt_sets(config: Config) -> tuple[list[dict] | None, dict[str, list[dict]]]:
    """The RL prompt pool (None: the generated train split) and the evaluation sets, validated."""
    world = config.prompt_world
    pool = read_records(config.train.prompts, world) if config.train.prompts else None
    return pool, {name: read_records(path, world) for name, path in config.train.eval_metadata.items()}


class TrainingLoop:
    last_checkpoint: Path | None = None  # the newest complete checkpoint this run wrote or resumed from

    def __init__(self, config: Config, runtime: Runtime, run_dir: str | None = None,
                 log: Callable[[str], None] = print, resume: str | None = None):
        """resume: None for a new run (its directory must be new or empty), "auto" or a checkpoint folder to
        continue the run in `run_dir` (see `resume_point`)."""
        self.config, self.runtime, self.log = config, runtime, log
        # the cheap checks first: a bad prompt file, or a run with nothing left to do, fails before workers start
        self.pool, self.eval_sets = read_prompt_sets(config)
        self.resumed = resume_point(config, run_dir, resume)
        self.start = 0  # the first iteration this process runs
        self.ahead: dict[int, Rollout] = {}  # one-step-off: a rollout launched before the update before its iteration
        runtime.start()
        # before the run directory, and closed if that is refused: a port in use leaves nothing behind
        self.metrics = MetricsSink(config.metrics, ray_export=config.runtime == "ray")
        try:
            self.run = self._open_run(run_dir)
        except BaseException:
            self.metrics.close()
            raise
        # a resumed run drops its rows past the checkpoint (all of them without one), and hides their events
        point = self.resumed
        self.metrics.open_events(self.run.layout.tensorboard,
                                 None if point is None else self.start + 1 if point.checkpoint else 0)
        self.metrics.record_run(str(self.run.path), config.algo.mode, str(config.model.kind))
        runtime.publish()  # samplers start from the learner's weights, whatever they loaded

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

    def restore(self, point: ResumePoint) -> None:
        self.last_checkpoint = point.checkpoint
        self.runtime.load(point.checkpoint, point.state)
        load_rng(point.checkpoint)
        mark_latest(point.checkpoint)  # resuming an older checkpoint: `latest` follows the run's new course
        self.start = point.state["iteration"]

    def inputs(self, iteration: int) -> tuple[list[dict], StepPlan]:
        """An iteration's prompts and step plan: functions of (seed, iteration) alone, so they can be computed ahead
        (one-step-off) and a resumed run needs no prompt-sampler state."""
        config, algo = self.config, self.config.algo
        return (training_records(config.seed, iteration, algo.rollout_prompts, self.pool),
                rollout_plan(config, iteration))

    def fit(self) -> list[dict]:
        """The loop: an iteration at a time, then evaluations and checkpoints on their schedule. With
        `cluster.max_staleness: 1` the next iteration's rollouts are launched before this one's update, and run while
        it trains. A fault the runtime cannot survive ends the run naming where to continue."""
        config, total = self.config, self.config.train.iterations
        bar = tqdm(total=total, initial=self.start, desc=config.algo.mode, unit="it", disable=None, dynamic_ncols=True)
        say = self.log if bar.disable else bar.write
        say(f"run directory: {self.run.path}")
        if self.start:
            say(f"resumed from {self.resumed.checkpoint} (iteration {self.start})")
        if self.metrics.url:
            say(f"metrics: {self.metrics.url}")
        evals: list[dict] = []
        with self._naming_where_to_continue():
            if config.train.eval_at_start and self.start == 0:
                say("iteration 0: " + self._eval_line(self.evaluate(0)))
            for iteration in range(self.start, total):
                row = self.iterate(iteration)
                self._report(row, bar, say)
                done = iteration + 1
                if done % config.train.eval_every == 0 or done == total:
                    evals = self.evaluate(done)
                    say(f"iteration {done}: " + self._eval_line(evals))
                    plot_rewards(self.run.metrics, self.run.evals, self.run.layout.reward_curve)
                if done % config.train.checkpoint_every == 0 or done == total:
                    self.checkpoint(done)
        bar.close()
        return evals

    @contextmanager
    def _naming_where_to_continue(self) -> Iterator[None]:
        try:
            yield
        except FaultError as exc:
            where = (f"the last complete checkpoint is {self.last_checkpoint}: continue with --resume auto"
                     if self.last_checkpoint else "no checkpoint was written yet")
            raise FaultError(f"{exc}; {where}") from None

    def iterate(self, iteration: int) -> dict:
        """One iteration, as the data flows: prompts -> rollouts -> rewards -> advantages -> update -> publish. Its
        row goes to metrics.jsonl and the metrics exports."""
        runtime, clock = self.runtime, time.time()
        records, plan = self.inputs(iteration)
        rollout = self.ahead.pop(iteration, None) or runtime.rollout(iteration, records, plan)
        terms = mask_unscored(runtime.score(rollout))
        rollout_s = time.time() - clock
        adv, usable, faults = iteration_advantages(self.config.algo, terms, [r.name for r in self.config.rewards],
                                                   len(records))
        self._launch_ahead(iteration + 1)
        update_clock = time.time()
        metrics = runtime.update(iteration, rollout, adv, usable)
        metrics.update(runtime.publish())
        row = {"iteration": iteration + 1, **reward_stats(self.config.rewards, terms), **faults,
               "adv_std": float(adv[usable].std()) if usable.any() else 0.0, "rollout_s": round(rollout_s, 3),
               "update_s": round(time.time() - update_clock, 3), "iteration_s": round(time.time() - clock, 3),
               "images": rollout.samples, "images_per_s": round(rollout.samples / rollout_s, 2), **metrics,
               **runtime.fault_counts()}
        self.run.log_metrics(row)
        self.metrics.record(row)
        return row

    def _launch_ahead(self, iteration: int) -> None:
        """One-step-off: the next iteration's rollouts, launched before this one's update (so its samples are one
        weight version behind, and corrected as such)."""
        if self.config.cluster.max_staleness >= 1 and iteration < self.config.train.iterations:
            self.ahead[iteration] = self.runtime.rollout(iteration, *self.inputs(iteration))

    def _report(self, row: dict, bar, say) -> None:
        """On a terminal a progress bar shows reward, throughput and staleness; elsewhere (CI, job logs) one line
        per iteration."""
        total = self.config.train.iterations
        if row["dropped_groups"]:
            say(f"warning: iteration {row['iteration']}: {row['dropped_groups']} of "
                f"{self.config.algo.rollout_prompts} prompt groups dropped (fewer than two samples every reward could "
                f"score; unscored samples per reward: {row['reward_failures']})")
        rewards = "  ".join(f"{k[7:]} {v:.3f}" for k, v in row.items() if k.startswith("reward/"))
        phase = "+".join(p for p, on in (("theta", row.get("train_theta")), ("phi", row.get("train_phi"))) if on)
        extra = f"  staleness {row['staleness']:.1f}" if "staleness" in row else ""
        unit = "img/s" if self.config.samples == "images" else "samples/s"
        if bar.disable:
            say(f"iteration {row['iteration']}/{total}  {rewards}  {row['images_per_s']:.1f} {unit}  "
                f"{row['iteration_s']:.1f} s{extra}  [{phase}]")
        else:
            bar.set_postfix_str(f"{rewards}  {row['images_per_s']:.1f} {unit}{extra}  [{phase}]", refresh=False)
            bar.update()

    def evaluate(self, iteration: int) -> list[dict]:
        """Every split at every evaluated step count. A row holds the family's summary, the rewards and the knob
        values the schedule applied per step (averaged over the split); the first split's images make the sample
        grid, and its knobs the schedule plot. No splits (train.eval_metadata: {}): nothing to evaluate."""
        if not self.eval_sets:
            return []
        config, rows, knobs = self.config, [], None
        names = [knob.name for knob in self.runtime.family.knobs]
        for steps in config.train.eval_steps:
            for split, records in self.eval_sets.items():
                result = self.runtime.evaluate(records, steps)
                row = {"iteration": iteration, "split": split, "steps": steps, **result.summary,
                       **reward_stats(config.rewards, mask_unscored(result.terms)),
                       "schedule": {name: [round(float(v), 5) for v in result.knobs[:, k]]
                                    for k, name in enumerate(names)}}
                self.run.log_eval(row)
                self.metrics.record_eval(row)
                rows.append(row)
                if knobs is None:
                    knobs = result.knobs
                    self._sample_grid(iteration, records, result)
        self.metrics.record_schedule(knobs, names)
        plot_schedule(knobs, self.runtime.family.hand_schedule(len(knobs)), names, self.run.layout.schedule_plot,
                      f"{config.algo.mode} at iteration {iteration}")
        return rows

    def _sample_grid(self, iteration: int, records: list[dict], result: EvalResult) -> None:
        if result.preview is None:
            return
        per_record = len(result.rows) // len(records)
        correct = [bool(result.rows[i * per_record]["correct"]) if result.rows else None
                   for i in range(len(result.preview))]
        prompts = [r["prompt"] for r in records[:len(result.preview)]]
        image_grid(result.preview, prompts, correct).save(self.run.layout.samples(iteration))

    def checkpoint(self, iteration: int) -> None:
        layout = self.run.layout
        folder = layout.staging(iteration)
        self.runtime.save(folder)
        save_rng(folder)
        self.last_checkpoint = layout.commit(iteration, {"seed": self.config.seed, "runtime": self.config.runtime,
                                                         **self.runtime.state()})

    def close(self) -> None:
        try:
            self.runtime.close()
            self.metrics.close()
        finally:
            if getattr(self, "run", None) is not None:
                self.run.release()

    @staticmethod
    def _eval_line(rows: list[dict]) -> str:
        """Each split's GenEval overall (on families that have one) and its mean rewards (on any model)."""
        return "  ".join(f"eval {r['split']}@{r['steps']}"
                         + "".join(f" {k} {r[k]:.3f}" for k in ("overall", "accuracy") if k in r)
                         + "".join(f" {k[7:]} {v:.3f}" for k, v in r.items() if k.startswith("reward/"))
                         for r in rows)


def trainer(config: Config, run_dir: str | None = None, log: Callable[[str], None] = print,
            resume: str | None = None) -> TrainingLoop:
    """The loop over the configured runtime (Ray is imported only when asked for)."""
    if config.runtime == "ray":
        from cogrpo.cluster.ray.driver import RayRuntime

        return TrainingLoop(config, RayRuntime(config, log), run_dir, log, resume)
    from cogrpo.cluster.local import LocalRuntime

    return TrainingLoop(config, LocalRuntime(config), run_dir, log, resume)
