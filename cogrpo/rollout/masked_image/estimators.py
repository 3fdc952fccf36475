"""theta's likelihood estimators for masked-token models, in the family-agnostic layout the learner reads
((B, S, A) log-probs and their action mask):

- trajectory: the committed tokens' log-probs re-computed on the canvas before each trained step with that
  step's knobs (exactly what the sampler drew from); A = the N positions, the mask those committed at the step.
- maskgrpo: the finished sample re-masked at rate r_j = min(gamma + (1 - gamma)(j + 1) / mu, 0.999) with a
  stored seed per inner epoch j, scored in one pass of the conditional model (S = 1); old and reference log-probs
  are computed on the identical masked inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cogrpo.proto.config import AlgoConfig
from cogrpo.proto.family import ActionLogProbs
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.batching import derived_seed
from cogrpo.rollout.masked_image.sampler import replay_log_probs


def committed_at(traj: Trajectory, steps: list[int]) -> torch.Tensor:
    """(B, len(steps), N) bool: the positions each step committed (its actions)."""
    return traj.tensors["commit_step"][:, None, :] == torch.tensor(steps)[None, :, None]


class TrajectoryReplay:
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


class MaskGRPO:
    def __init__(self, algo: AlgoConfig):
        self.gamma = algo.maskgrpo_gamma

    def inputs(self, traj: Trajectory, epochs: int) -> list[dict[str, torch.Tensor]]:
        """The finished samples re-masked at each epoch's rate, with one stored seed per inner epoch (derived from
        the batch seed), so old, reference and new log-probs all see identical inputs."""
        shape = tuple(traj.tensors["tokens"].shape)
        return [{"masked": random_mask(shape, r, derived_seed(traj.seed, j))}
                for j, r in enumerate(maskgrpo_rates(self.gamma, epochs))]

    def log_probs(self, model, traj, steps, inputs, select=None) -> ActionLogProbs:
        """log p_theta(x_0 | re-masked x_0, c) at the masked positions: the conditional model at temperature 1,
        run on the model's device and returned beside the trajectory. It scores the finished sample, not steps, so
        `select` does not apply."""
        device, masked = model.device, inputs["masked"]
        tokens = traj.tensors["tokens"]
        logits = model(tokens.to(device).masked_fill(masked.to(device), model.mask_id),
                       traj.tensors["cond"].to(device))
        logp = F.log_softmax(logits, dim=-1).gather(-1, tokens.to(device)[..., None]).squeeze(-1)
        return ActionLogProbs(logp.to(tokens.device)[:, None, :], masked[:, None, :])

    def behaviour(self, traj: Trajectory, steps: list[int]) -> None:
        return None
