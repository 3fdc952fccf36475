"""The GRPO objectives of both policies, shared by every mode, family and runtime. They see per-step action
log-probabilities, their masks and advantages, never tokens or pixels.

theta: per scored step (or estimator view), the ratios of the step's action elements averaged (or, with
`ratio: step_product`, one ratio per step from the summed log-ratio), clipped PPO-style; stale samples carry a
truncated behaviour -> old importance weight. phi: the schedule action's Gaussian log-prob per trained step.
Every step of a sample shares the sample's group-relative advantage.
"""

from __future__ import annotations

import math

import torch

from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import AlgoConfig
from cogrpo.proto.family import Denominator, own_counts
from cogrpo.proto.messages import Trajectory


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


def theta_objective(logp: torch.Tensor, mask: torch.Tensor, old: torch.Tensor, behaviour: torch.Tensor | None,
                    adv: torch.Tensor, algo: AlgoConfig, ref_logp: torch.Tensor | None = None,
                    denominator: Denominator = own_counts) -> tuple[torch.Tensor, dict]:
    """Loss (to minimise) and metrics. logp, mask, old, behaviour, ref_logp: (B, S, A); adv: (B,). behaviour: the
    sampler's log-probs when the estimator has them (their ratio to `old` is the importance weight of stale
    samples; 1 for fresh ones), else None. Means are sums over the batch divided by `denominator` of its counts
    (of action elements, of scored steps): a data-parallel rank's share divides by the whole minibatch's."""
    logratio = (logp - old) * mask
    has_actions = mask.any(-1)  # (B, S)
    elements, scored_steps = denominator(torch.stack([mask.sum(), has_actions.sum()]))
    if algo.ratio == "token_mean":
        surrogate, clipped = clipped_surrogate(logratio, adv[:, None, None], algo.clip_eps)
        weight = mask if behaviour is None else truncated_is_weight(old, behaviour, algo.is_cap) * mask
        per_element = surrogate * weight
        if algo.token_average == "token":
            objective = per_element.sum() / elements
        else:
            objective = (per_element.sum(-1) / mask.sum(-1).clamp(min=1))[has_actions].sum() / scored_steps
        clip_frac = clipped[mask].float().sum() / elements
    else:  # one ratio per step: the product of its elements' ratios
        surrogate, clipped = clipped_surrogate(logratio.sum(-1), adv[:, None], algo.clip_eps)
        if behaviour is not None:  # the step's own behaviour -> old ratio, the same product, capped
            surrogate = surrogate * torch.exp(((old - behaviour) * mask).sum(-1)).clamp(max=algo.is_cap)
        objective = surrogate[has_actions].sum() / scored_steps
        clip_frac = clipped[has_actions].float().sum() / scored_steps
    approx_kl = ((torch.exp(logratio) - 1) - logratio)[mask].sum() / elements
    metrics = {"clip_frac_theta": clip_frac.item(), "approx_kl_theta": approx_kl.item()}
    loss = -objective
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)[mask].sum() / elements
        loss = loss + algo.kl_beta * kl
        metrics["kl_ref"] = kl.item()
    return loss, metrics


def phi_log_probs(policy: SchedulePolicy, traj: Trajectory, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (B, len(steps)) of the recorded schedule actions under `policy`, from the recorded inputs, over
    each step's effective dimensions; and the policy's std."""
    idx = torch.tensor(steps)
    step = traj.step_index[idx].expand(traj.batch_size, -1)
    prompt_feat = traj.prompt_feat[:, None, :].expand(-1, len(steps), -1)
    mean, std = policy(step, traj.schedule_steps, traj.sched_state[:, idx], prompt_feat)
    return SchedulePolicy.log_prob(mean, std, traj.sched_action[:, idx], traj.sched_mask[idx]), std


def phi_objective(policy: SchedulePolicy, traj: Trajectory, adv: torch.Tensor, steps: list[int], select: torch.Tensor,
                  algo: AlgoConfig, old_logp: torch.Tensor | None = None,
                  denominator: Denominator = own_counts) -> tuple[torch.Tensor, dict]:
    """select (B, len(steps)): the (sample, step) pairs trained. old_logp (B, len(steps)): the learner's old
    log-probs when they differ from the behaviour ones. Means divide by `denominator` of their counts, as theta's."""
    logp, std = phi_log_probs(policy, traj, steps)
    behaviour = traj.sched_logp[:, torch.tensor(steps)]
    old = behaviour if old_logp is None else old_logp
    logratio = logp - old
    surrogate, clipped = clipped_surrogate(logratio, adv[:, None], algo.clip_eps_phi)
    surrogate = surrogate * truncated_is_weight(old, behaviour, algo.is_cap)
    select = select & traj.sched_mask[torch.tensor(steps)].any(-1)  # a step with no effective dimension: no action
    trained, stds = denominator(torch.stack([select.sum(), torch.tensor(std.numel())]))
    metrics = {"clip_frac_phi": (clipped[select].float().sum() / trained).item(),
               "approx_kl_phi": (((torch.exp(logratio) - 1) - logratio)[select].sum() / trained).item(),
               "std_phi": (std.sum() / stds).item()}
    return -surrogate[select].sum() / trained, metrics
