"""theta's likelihood estimators for masked-token models (images and texts), in the family-agnostic layout the
learner reads ((B, S, A) log-probs and their action mask):

- trajectory: the committed tokens' log-probs re-computed on the canvas before each trained step with that
  step's knobs (exactly what the sampler drew from; TraceRL's idea); A = the N positions, the mask those
  committed at the step.
- maskgrpo: the finished sample re-masked at rate r_j = min(gamma + (1 - gamma)(j + 1) / mu, 0.999) with a
  stored seed per inner epoch j, scored in one pass (S = 1) with the guidance the rollout used, at temperature 1;
  positions are masked uniformly (images) or AR-like, later positions more often (texts).
- d1 (diffu-GRPO): the whole completion masked and each prompt token masked with probability 0.15, one pass.
- unigrpo (UniGRPO): uniform re-masking at rates spaced evenly over the inner epochs from a random start.
Every re-masking estimator draws its masks once per inner epoch from a seed derived from the batch's, so old,
reference and new log-probs see identical inputs.
"""

from __future__ import annotations

import torch

from cogrpo.proto.config import AlgoConfig
from cogrpo.proto.family import ActionLogProbs
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.batching import derived_seed
from cogrpo.rollout.masked.sampler import _W, chosen_log_probs, replay_log_probs

D1_PROMPT_MASK = 0.15  # d1's share of prompt tokens masked


def committed_at(traj: Trajectory, steps: list[int]) -> torch.Tensor:
    """(B, len(steps), N) bool: the positions each step committed (its actions)."""
    return traj.tensors["commit_step"][:, None, :] == torch.tensor(steps)[None, :, None]


class TrajectoryReplay:
    scores_steps = True

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        return [{}]

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        """Only the selected (sample, step) pairs are replayed and count as actions."""
        if select is None or bool(select.all()):
            return ActionLogProbs(replay_log_probs(model, traj, steps), committed_at(traj, steps))
        actions = committed_at(traj, steps) & select[..., None]
        return ActionLogProbs(replay_log_probs(model, traj, steps, select), actions)

    def behaviour(self, traj: Trajectory, steps: list[int]) -> torch.Tensor:
        return traj.tensors["token_logp"][:, None, :].expand(-1, len(steps), -1)


def maskgrpo_rates(gamma: float, iterations: int) -> list[float]:
    """MaskGRPO's truncated mask rates r_j = min(gamma + (1 - gamma) (j + 1) / mu, 0.999)."""
    return [min(gamma + (1 - gamma) * (j + 1) / iterations, 0.999) for j in range(iterations)]


def random_mask(shape: tuple[int, int], rate: float, seed: int) -> torch.Tensor:
    """Exactly max(1, round(rate N)) uniformly random masked positions per row, reproducible from the seed."""
    b, n = shape
    count = max(1, round(rate * n))
    scores = torch.rand(b, n, generator=torch.Generator().manual_seed(seed))
    return scores.argsort(1).argsort(1) < count


def fading_mask(shape: tuple[int, int], rate: float, seed: int) -> torch.Tensor:
    """MaskGRPO's AR-like re-mask for text: position i stays visible with probability min(1, c v_i), v =
    linspace(1, 0, N), c chosen so that about `rate` of the positions are masked (c = 2 (1 - rate) from rate 1/2 up,
    1 / (2 rate) below, where the cap at 1 binds), the later ones more often. At least one masked position per row
    (the last)."""
    b, n = shape
    scale = 2 * (1 - rate) if rate >= 0.5 else 1 / (2 * max(rate, 1e-6))
    keep = (scale * torch.linspace(1, 0, n)).clamp(max=1)
    masked = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) >= keep
    masked[:, -1] = True
    return masked


def remasked_log_probs(model, traj: Trajectory, masked: torch.Tensor,
                       cond: torch.Tensor | None = None) -> ActionLogProbs:
    """log p_theta(x_0 | re-masked x_0, c) at the masked positions (S = 1), at temperature 1 and with the mean
    guidance the sample was decoded with (a family without guidance: the conditional model), on the model's device
    and returned beside the trajectory. cond: the conditioning to use (default the trajectory's)."""
    device, tokens = model.device, traj.tensors["tokens"]
    cond = traj.tensors["cond"] if cond is None else cond
    knobs = torch.ones(traj.batch_size, traj.knobs.shape[2])
    if knobs.shape[1] > _W:
        knobs[:, _W] = traj.knobs[:, :, _W].mean(1)
    logp = chosen_log_probs(model, tokens.to(device).masked_fill(masked.to(device), model.mask_id), cond.to(device),
                            model.null_conditioning(len(tokens)).to(device), knobs.to(device), tokens.to(device))
    return ActionLogProbs(logp.to(tokens.device)[:, None, :], masked[:, None, :])


class Remasking:
    """An estimator that scores the finished sample re-masked (S = 1): the masks are drawn per inner epoch by
    `masks`; it scores the finished sample, not steps, so `select` does not apply, and its scores are not the
    sampler's (no behaviour log-probs)."""

    scores_steps = False

    def masks(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        return self.masks(traj, epochs)

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        return remasked_log_probs(model, traj, inputs["masked"])

    def behaviour(self, traj: Trajectory, steps: list[int]) -> None:
        return None


class MaskGRPO(Remasking):
    def __init__(self, algo: AlgoConfig, fading: bool = False):
        self.gamma, self.draw = algo.maskgrpo_gamma, fading_mask if fading else random_mask

    def masks(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        shape = tuple(traj.tensors["tokens"].shape)
        return [{"masked": self.draw(shape, r, derived_seed(traj.seed, j))}
                for j, r in enumerate(maskgrpo_rates(self.gamma, epochs))]


class UniGRPO(Remasking):
    def masks(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """Rates (t0 + j / mu) mod 1 over the inner epochs j < mu, t0 uniform from the batch seed."""
        shape = tuple(traj.tensors["tokens"].shape)
        start = torch.rand(1, generator=torch.Generator().manual_seed(derived_seed(traj.seed, epochs))).item()
        return [{"masked": random_mask(shape, (start + j / epochs) % 1.0, derived_seed(traj.seed, j))}
                for j in range(epochs)]


class D1(Remasking):
    def masks(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """Every completion position masked; each epoch its own prompt mask."""
        tokens, cond = traj.tensors["tokens"], traj.tensors["cond"]
        return [{"masked": torch.ones_like(tokens, dtype=torch.bool),
                 "prompt_masked": torch.rand(tuple(cond.shape), generator=torch.Generator().manual_seed(
                     derived_seed(traj.seed, j))) < D1_PROMPT_MASK} for j in range(epochs)]

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        cond = traj.tensors["cond"].masked_fill(inputs["prompt_masked"], model.mask_id)
        return remasked_log_probs(model, traj, inputs["masked"], cond)
