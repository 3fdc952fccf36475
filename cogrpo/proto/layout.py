"""The run directory and checkpoint layout: every file name and marker, and the protocol that keeps `latest`
naming a complete checkpoint. Whoever writes or reads a run goes through these names.

    <run>/config.yaml  metrics.jsonl  eval.jsonl  reward_curve.png  schedule.png  samples_iter_NNNNNN.png
    <run>/tensorboard/  (TensorBoard event files of the same rows, with metrics.tensorboard)
    <run>/.cogrpo-run  (marks a cogrpo run)   <run>/.lock  (the writing process, while it runs)
    <run>/checkpoints/iter_NNNNNN/  (state.json last)   <run>/checkpoints/latest  (names the newest complete one)

A checkpoint's parts are written by the processes that own them into `.iter_NNNNNN.partial`; the driver then
writes `state.json`, renames the folder and rewrites `latest` (temp file + os.replace), so a job killed at any
moment leaves `latest` naming a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from cogrpo.proto.errors import InputError, clip


class CheckpointLayout:
    """One checkpoint folder's files."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.model = self.folder / "model.safetensors"  # theta's weights
        self.average = self.folder / "averaged_model.safetensors"  # theta's moving average, when the run keeps one
        self.policy = self.folder / "schedule_policy.safetensors"  # phi's weights
        self.optimizers = self.folder / "optimizers.pt"  # optimizer states by policy
        self.rng = self.folder / "rng.pt"  # the driver's RNG states
        self.state = self.folder / "state.json"  # the driver's state: iteration, seed, runtime, weight version
        self.deepspeed = self.folder / "deepspeed"  # DeepSpeed's own checkpoint (the Ray learner's theta)

    def exported_model(self) -> Path:
        """The model a run exports: its average if it kept one, else its live weights."""
        return self.average if self.average.is_file() else self.model

    def read_state(self) -> dict:
        if not self.state.is_file():
            raise InputError(f"{self.folder} is not a complete checkpoint (no {self.state.name})")
        try:
            state = json.loads(self.state.read_text())
            int(state["iteration"])
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"checkpoint state {self.state} is not valid ({exc})") from None
        return state


class RunLayout:
    """A run directory's files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.evals = self.root / "eval.jsonl"
        self.reward_curve = self.root / "reward_curve.png"
        self.schedule_plot = self.root / "schedule.png"
        self.tensorboard = self.root / "tensorboard"  # event files, when metrics.tensorboard is on
        self.checkpoints = self.root / "checkpoints"
        self.marker = self.root / ".cogrpo-run"
        self.lock = self.root / ".lock"
        self.latest_marker = self.checkpoints / "latest"

    def samples(self, iteration: int) -> Path:
        return self.root / f"samples_iter_{iteration:06d}.png"

    def checkpoint(self, iteration: int) -> CheckpointLayout:
        return CheckpointLayout(self.checkpoints / f"iter_{iteration:06d}")

    def staging(self, iteration: int) -> Path:
        """An empty folder for the parts of the checkpoint at `iteration` (a leftover of a killed job is cleared)."""
        staging = self.checkpoints / f".iter_{iteration:06d}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, iteration: int, state: dict) -> Path:
        """Complete the staged checkpoint: its state.json last, then the folder under its final name, then
        `latest`."""
        staging = self.checkpoints / f".iter_{iteration:06d}.partial"
        final = self.checkpoint(iteration).folder
        (staging / "state.json").write_text(json.dumps({"iteration": iteration, **state}))
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        mark_latest(final)
        return final

    def latest(self) -> Path | None:
        """The newest complete checkpoint folder, if any."""
        marker = self.latest_marker
        if not marker.is_file():
            return None
        name = marker.read_bytes()[:64].decode("ascii", errors="replace").strip()
        if not re.fullmatch(r"iter_\d{6}", name):
            raise InputError(f"{marker} is damaged: it names {clip(name)!r}, not a checkpoint folder (iter_NNNNNN)")
        return marker.parent / name

    def holds(self, folder: Path) -> bool:
        """Whether `folder` is one of this run's checkpoint folders."""
        return folder.resolve().parent == self.checkpoints.resolve()


def mark_latest(folder: Path) -> None:
    """Point `latest` at a complete checkpoint folder, atomically."""
    marker = folder.parent / ".latest.tmp"
    marker.write_text(folder.name)
    os.replace(marker, folder.parent / "latest")


def latest_checkpoint(run: Path) -> Path:
    """A run directory's latest complete checkpoint folder."""
    folder = RunLayout(run).latest()
    if folder is None:
        raise InputError(f"run directory {clip(str(run))} has no complete checkpoint (no checkpoints/latest)")
    return folder


def exported_model_of(run: Path) -> Path:
    """A run directory's exported model file: its latest complete checkpoint's (averaged) model."""
    return CheckpointLayout(latest_checkpoint(run)).exported_model()


def run_checkpoint(path: Path) -> tuple[RunLayout, CheckpointLayout]:
    """A run directory (its latest complete checkpoint) or one of its checkpoint folders -> the run and the
    checkpoint, which must be complete."""
    if RunLayout(path).marker.is_file():
        run, folder = RunLayout(path), latest_checkpoint(path)
    elif RunLayout(path.parent.parent).marker.is_file() and path.parent.name == "checkpoints":
        run, folder = RunLayout(path.parent.parent), path
    else:
        raise InputError(f"{clip(str(path))} is neither a cogrpo run directory nor one of its checkpoint folders "
                         "(<run>/checkpoints/iter_NNNNNN)")
    checkpoint = CheckpointLayout(folder)
    checkpoint.read_state()
    return run, checkpoint
