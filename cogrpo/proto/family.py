"""The model-family seam: what differs between masked image models, flow-matching image models, masked text models
(and a family of one's own) behind one contract, so the learner, both runtimes, checkpoints, metrics and the CLI
see per-step action log-probabilities, advantages and named tensors, never tokens or pixels.

A family supplies the backbone (`build_model`), the sampler that records a trajectory under a step plan
(`sample`), theta's likelihood estimators that replay per-step action log-probs (`estimator`), the schedule knobs
it exposes to the schedule policy (`knobs`, `hand_schedule`), and how a finished trajectory becomes reward input
(`decode`: images or texts, as `samples` says). A config is checked against the built-in families' catalogue
(`proto/kinds.py`) when it loads; a family of one's own ("package.module:Class") declares the same on its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch

from cogrpo.proto.kinds import Knob
from cogrpo.proto.messages import Trajectory


@dataclass
class ActionLogProbs:
    """theta's log-probabilities of a batch's actions: (B, S, A) for S scored steps (or views) of up to A action
    elements each (a masked image family's committed tokens, a flow family's one Gaussian transition), and the
    (B, S, A) mask of the entries that are actions."""

    logp: torch.Tensor
    mask: torch.Tensor


class Estimator(Protocol):
    """One way to score theta's likelihood of the recorded actions (trajectory replay, MaskGRPO's re-masking, ...)."""

    scores_steps: bool  # S = len(steps), one view per trained step: a replay may then be split into chunks of steps

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """Per inner epoch, the per-sample tensors its scoring depends on (a random re-mask, drawn once so that
        old, reference and new log-probs see identical inputs); [{}] when nothing varies between epochs."""

    def log_probs(self, model: torch.nn.Module, traj: Trajectory, steps: list[int], inputs: dict[str, torch.Tensor],
                  select: torch.Tensor | None = None) -> ActionLogProbs:
        """Differentiable log-probs under `model`; select (B, len(steps)): the (sample, step) pairs trained (an
        estimator that scores steps computes only those, and only their entries are actions)."""

    def behaviour(self, traj: Trajectory, steps: list[int]) -> torch.Tensor | None:
        """(B, S, A): the log-probs recorded at sampling time in the layout of `log_probs`, or None when this
        estimator's scores are not the sampler's (they are then computed from the model before the update)."""


Denominator = Callable[[torch.Tensor], torch.Tensor]  # a batch's counts -> what the objective divides its sums by


def own_counts(counts: torch.Tensor) -> torch.Tensor:
    """The denominator of a batch trained whole: its own counts. A data-parallel rank divides its share of a
    minibatch by the whole minibatch's instead (learner/ranks.py), so that the ranks' mean gradient is exact."""
    return counts


class ForwardObjective(Protocol):
    """A likelihood-free objective for theta on the forward (noising) process of the finished samples
    (DiffusionNFT): no per-step log-probs, so rollouts may be decoded by any solver."""

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """Per inner epoch, the per-sample noising draws, taken once so that the old, reference and current models
        see identical inputs."""

    def prediction(self, model: torch.nn.Module, traj: Trajectory, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's prediction on those inputs (differentiable; callers take the old and reference ones under
        no_grad)."""

    def loss(self, model: torch.nn.Module, traj: Trajectory, inputs: dict[str, torch.Tensor], old: torch.Tensor,
             advantages: torch.Tensor, reference: torch.Tensor | None,
             denominator: Denominator = own_counts) -> tuple[torch.Tensor, dict]:
        """The objective on a minibatch, given the old (and reference) predictions; (loss, metrics). Its means are
        sums divided by `denominator` of their counts."""


class Family(Protocol):
    samples: str
    knobs: tuple[Knob, ...]

    def build_model(self) -> torch.nn.Module:
        """The backbone (theta), with the weights the config names."""

    def schedule_encoder(self, model: torch.nn.Module, config: Any) -> torch.nn.Module:
        """What the schedule policy (configured by `config`, a SchedulePolicyConfig) reads of each sample's state
        and prompt, taken from the model as built: a module with `state_dim` and `prompt_dim`, whose frozen copies
        are buffers (saved and sent with the policy)."""

    def hand_schedule(self, steps: int) -> torch.Tensor:
        """(steps, len(knobs)): the hand-designed knob values per step."""

    def sample(self, model: torch.nn.Module, prompts: list[str], schedule: Any, plan: Any, seed: int) -> Trajectory:
        """Decode a batch under a schedule (rollout.schedule.Schedule) and a step plan (rollout.steps.StepPlan),
        recording what replay needs. Deterministic for a seed."""

    def decode(self, model: torch.nn.Module, traj: Trajectory) -> np.ndarray | list[str]:
        """The finished samples, as the rewards take them."""

    def estimator(self, name: str, algo: Any) -> Estimator:
        """theta's likelihood estimator `name` (algo.theta_likelihood)."""

    def forward_objective(self, name: str, algo: Any) -> ForwardObjective:
        """theta's likelihood-free objective `name` (algo.theta_objective other than "clipped"); a family without
        one raises InputError."""

    def summarize(self, records: list[dict], samples: Any) -> tuple[dict, list[dict]]:
        """An evaluation's family-specific summary and per-sample rows (GenEval's on the shapes world; may be
        empty)."""
