"""The pieces of the GRPO objectives, shared by every mode and runtime."""

from __future__ import annotations

import math

import torch


def cosine_decay(progress: float, min_ratio: float) -> float:
    """1 at progress 0 down to min_ratio at progress 1 (clamped), along half a cosine."""
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def clipped_surrogate(logratio: torch.Tensor, adv: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate min(rho A, clip(rho, 1 - eps, 1 + eps) A), elementwise, and where it clipped."""
    ratio = torch.exp(logratio)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - eps, 1 + eps) * adv
    return torch.minimum(unclipped, clipped), (clipped < unclipped).detach()


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref): exp(ref - logp) - (ref - logp) - 1 >= 0."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def truncated_is_weight(old_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """min(pi_old / pi_behaviour, cap): corrects samples drawn by older weights than the learner's old policy."""
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap)


def maskgrpo_rates(gamma: float, iterations: int) -> list[float]:
    """MaskGRPO's truncated mask rates r_j = min(gamma + (1 - gamma) (j + 1) / mu, 0.999)."""
    return [min(gamma + (1 - gamma) * (j + 1) / iterations, 0.999) for j in range(iterations)]


def random_mask(shape: tuple[int, int], rate: float, seed: int) -> torch.Tensor:
    """Exactly max(1, round(rate N)) uniformly random masked positions per row, reproducible from the seed."""
    b, n = shape
    count = max(1, round(rate * n))
    scores = torch.rand(b, n, generator=torch.Generator().manual_seed(seed))
    return scores.argsort(1).argsort(1) < count
