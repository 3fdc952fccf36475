"""Messages that cross process boundaries. Plain tensors only, so any transport (pickle, Ray, files) carries them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Decision:
    """A schedule's choice for one decoding step."""

    knobs: torch.Tensor  # (B, K) knob values, in the family's knob order
    action: torch.Tensor  # (B, A) unconstrained action (A = 0 for a fixed schedule)
    logp: torch.Tensor  # (B,) log-prob of the action's effective dimensions (0 for a fixed schedule)
    mask: torch.Tensor  # (A,) bool: the action dimensions that could change the outcome at this step


_SHARED = ("sched_mask", "stochastic", "step_index", "schedule_steps", "seed")  # per-step or per-batch fields


@dataclass
class Trajectory:
    """A batch of trajectories: the family's own record of each sample (named tensors, batch first: a masked
    model's tokens and commit steps, a flow model's latents and times per step, ...), and per executed step what the
    schedule policy read and did. Everything above the family sees the named tensors as opaque."""

    tensors: dict[str, torch.Tensor]  # the family's per-sample record
    knobs: torch.Tensor  # (B, T, K) float: the knob values applied at each executed step
    sched_state: torch.Tensor  # (B, T, F) float: what the schedule policy read of each sample's state per step
    prompt_feat: torch.Tensor  # (B, D) float: the prompt features it read
    sched_action: torch.Tensor  # (B, T, A) float: its unconstrained actions (A = 0 for a fixed schedule)
    sched_logp: torch.Tensor  # (B, T) float: their behaviour log-probs (0 for a fixed schedule)
    sched_mask: torch.Tensor  # (T, A) bool: action dimensions that could change the outcome (they alone count)
    stochastic: torch.Tensor  # (T,) bool: steps whose actions were sampled (the others deterministic, no log-probs)
    step_index: torch.Tensor  # (T,) long: each executed step's index in the schedule (differs under flash plans)
    schedule_steps: int  # length of the schedule the step indices refer to
    seed: int  # the generator seed of this batch

    @property
    def batch_size(self) -> int:
        return self.knobs.shape[0]

    @property
    def steps(self) -> int:
        return self.knobs.shape[1]

    def select(self, index: torch.Tensor) -> Trajectory:
        """The sub-batch at `index` (per-sample fields only; per-step fields are shared)."""
        per_sample = {f.name: getattr(self, f.name)[index] for f in fields(self)
                      if f.name not in _SHARED and f.name != "tensors"}
        return replace(self, tensors={k: v[index] for k, v in self.tensors.items()}, **per_sample)

    @staticmethod
    def cat(parts: list[Trajectory]) -> Trajectory:
        first = parts[0]
        if any(not torch.equal(p.stochastic, first.stochastic) or not torch.equal(p.step_index, first.step_index)
               for p in parts):
            raise ValueError("cannot concatenate trajectories with different step plans")
        per_sample = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(first)
                      if f.name not in _SHARED and f.name != "tensors"}
        tensors = {k: torch.cat([p.tensors[k] for p in parts]) for k in first.tensors}
        return replace(first, tensors=tensors, **per_sample)
