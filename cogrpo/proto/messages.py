"""Messages that cross process boundaries. Plain tensors only, so any transport (pickle, Ray, files) carries them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

# The schedule knobs, in the order of the last dimension of every knob tensor.
KNOBS: tuple[str, ...] = ("remask_ratio", "temperature", "remask_temperature", "guidance")


@dataclass
class Decision:
    """A schedule's choice for one decoding step."""

    knobs: torch.Tensor  # (B, len(KNOBS))
    action: torch.Tensor  # (B, K) unconstrained action (K = 0 for a fixed schedule)
    logp: torch.Tensor  # (B,) log-prob of the action (0 for a fixed schedule)


_SHARED = ("stochastic", "step_index", "schedule_steps", "seed", "mask_id")  # per-step or per-batch fields


@dataclass
class Trajectory:
    """A batch of decoding trajectories, stored compactly.

    The canvas before step t is rebuilt from `tokens` and `commit_step` (see `canvas_before`), so each sample
    costs two integer grids, one float per committed token, and a few floats per step.
    """

    cond: torch.Tensor  # (B, ...) text conditioning the model saw
    tokens: torch.Tensor  # (B, N) long: final tokens
    commit_step: torch.Tensor  # (B, N) long: the step at which each position was committed
    token_logp: torch.Tensor  # (B, N) float: behaviour log-prob of the committed token (0 on greedy steps)
    knobs: torch.Tensor  # (B, T, len(KNOBS)) float: the knob values applied at each executed step
    stochastic: torch.Tensor  # (T,) bool: steps whose tokens and schedule actions were sampled (they carry log-probs)
    step_index: torch.Tensor  # (T,) long: each executed step's index in the schedule (differs under flash plans)
    schedule_steps: int  # length of the schedule the step indices refer to
    prompt_feat: torch.Tensor  # (B, D) float: the prompt features the schedule policy read
    sched_action: torch.Tensor  # (B, T, K) float: unconstrained schedule actions (K = 0 for a fixed schedule)
    sched_logp: torch.Tensor  # (B, T) float: their behaviour log-probs (0 for a fixed schedule)
    seed: int  # the generator seed of this batch
    mask_id: int

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def steps(self) -> int:
        return self.knobs.shape[1]

    def masked_fraction_before(self) -> torch.Tensor:
        """(B, T): the fraction of positions still masked when each step began."""
        steps = torch.arange(self.steps)
        return (self.commit_step[:, None, :] >= steps[None, :, None]).float().mean(-1)

    def canvas_before(self, step: int) -> torch.Tensor:
        return torch.where(self.commit_step < step, self.tokens, torch.full_like(self.tokens, self.mask_id))

    def select(self, index: torch.Tensor) -> Trajectory:
        """The sub-batch at `index` (per-sample fields only; per-step fields are shared)."""
        per_sample = {f.name: getattr(self, f.name)[index] for f in fields(self)
                      if f.name not in _SHARED}
        return replace(self, **per_sample)

    @staticmethod
    def cat(parts: list[Trajectory]) -> Trajectory:
        first = parts[0]
        if any(not torch.equal(p.stochastic, first.stochastic) or not torch.equal(p.step_index, first.step_index)
               for p in parts):
            raise ValueError("cannot concatenate trajectories with different step plans")
        per_sample = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(first)
                      if f.name not in _SHARED}
        return replace(first, **per_sample)
