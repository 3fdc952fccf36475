"""The Co-GRPO learner: clipped GRPO objectives for the model policy (theta) and the schedule policy (phi), and
the update step that alternates between them. Free of any runtime: both trainers call `Learner.update`.

theta, trajectory likelihood: per trained step, the committed tokens' log-probs re-computed on the canvas before
that step with that step's knobs; per-token ratios averaged over the step's tokens (or one product ratio per step).
theta, MaskGRPO likelihood: the finished sample re-masked at rate r_j with a stored seed per inner epoch j; old and
reference log-probs on the identical masked inputs, computed once before the first epoch.
phi: the schedule action's Gaussian log-prob per trained step.
Every step of a sample shares the sample's group-relative advantage.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from cogrpo.learner.objectives import (clipped_surrogate, cosine_decay, k3_kl, maskgrpo_rates, random_mask,
                                      truncated_is_weight)
from cogrpo.models.interface import MaskedTokenModel
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import AlgoConfig, Config
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.sampler import replay_log_probs


@dataclass
class ScoredBatch:
    traj: Trajectory
    advantages: torch.Tensor  # (B,) group-relative, 0 for unusable samples
    usable: torch.Tensor  # (B,) bool
    trained: list[int]  # positions in the executed plan whose log-probs enter the loss


def theta_trajectory_objective(model: MaskedTokenModel, traj: Trajectory, adv: torch.Tensor, steps: list[int],
                               algo: AlgoConfig, old_logp: torch.Tensor | None = None,
                               reference: MaskedTokenModel | None = None) -> tuple[torch.Tensor, dict]:
    """Loss (to minimise) and metrics over `steps`. old_logp (B, N): the learner's old log-probs when they differ
    from the behaviour ones (stale samples); their ratio to the behaviour log-probs is a truncated IS weight."""
    logp = replay_log_probs(model, traj, steps)  # (B, S, N)
    own = traj.commit_step[:, None, :] == torch.tensor(steps)[None, :, None]
    behaviour = traj.token_logp[:, None, :]
    old = behaviour if old_logp is None else old_logp[:, None, :]
    weight = truncated_is_weight(old, behaviour, algo.is_cap) * own
    logratio = (logp - old) * own
    has_tokens = own.any(-1)  # (B, S)
    if algo.ratio == "token_mean":
        surrogate, clipped = clipped_surrogate(logratio, adv[:, None, None], algo.clip_eps)
        per_token = surrogate * weight
        if algo.token_average == "token":
            objective = per_token.sum() / own.sum()
        else:
            objective = (per_token.sum(-1) / own.sum(-1).clamp(min=1))[has_tokens].mean()
        clip_frac = clipped[own].float().mean()
    else:
        surrogate, clipped = clipped_surrogate(logratio.sum(-1), adv[:, None], algo.clip_eps)
        objective = (surrogate * (weight.sum(-1) / own.sum(-1).clamp(min=1)))[has_tokens].mean()
        clip_frac = clipped[has_tokens].float().mean()
    approx_kl = ((torch.exp(logratio) - 1) - logratio)[own].mean()
    metrics = {"clip_frac_theta": clip_frac.item(), "approx_kl_theta": approx_kl.item()}
    loss = -objective
    if algo.kl_beta > 0 and reference is not None:
        with torch.no_grad():
            ref_logp = replay_log_probs(reference, traj, steps)
        kl = k3_kl(logp, ref_logp)[own].mean()
        loss = loss + algo.kl_beta * kl
        metrics["kl_ref"] = kl.item()
    return loss, metrics


def maskgrpo_masks(traj: Trajectory, rates: list[float]) -> list[torch.Tensor]:
    """The finished samples re-masked at each rate, with one stored seed per inner epoch (derived from the
    batch seed), so old, reference and new log-probs all see identical inputs."""
    return [random_mask(tuple(traj.tokens.shape), r, traj.seed * 1009 + j) for j, r in enumerate(rates)]


def maskgrpo_log_probs(model: MaskedTokenModel, traj: Trajectory, masked: torch.Tensor) -> torch.Tensor:
    """log p_theta(x_0 | re-masked x_0, c) at every position (B, N): the conditional model at temperature 1,
    run on the model's device and returned beside the trajectory."""
    device = model.device
    tokens = traj.tokens.to(device)
    logp = F.log_softmax(model(tokens.masked_fill(masked.to(device), model.mask_id), traj.cond.to(device)), dim=-1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1).to(traj.tokens.device)


def theta_maskgrpo_objective(model: MaskedTokenModel, traj: Trajectory, adv: torch.Tensor, masked: torch.Tensor,
                             old_logp: torch.Tensor, algo: AlgoConfig,
                             ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    logp = maskgrpo_log_probs(model, traj, masked)
    logratio = (logp - old_logp) * masked
    surrogate, clipped = clipped_surrogate(logratio, adv[:, None], algo.clip_eps)
    objective = ((surrogate * masked).sum(-1) / masked.sum(-1)).mean()
    metrics = {"clip_frac_theta": clipped[masked].float().mean().item(),
               "approx_kl_theta": ((torch.exp(logratio) - 1) - logratio)[masked].mean().item()}
    loss = -objective
    if algo.kl_beta > 0 and ref_logp is not None:
        kl = k3_kl(logp, ref_logp)[masked].mean()
        loss = loss + algo.kl_beta * kl
        metrics["kl_ref"] = kl.item()
    return loss, metrics


def phi_log_probs(policy: SchedulePolicy, traj: Trajectory, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs (B, len(steps)) of the recorded schedule actions under `policy`, from the recorded inputs, and
    the policy's std."""
    idx = torch.tensor(steps)
    step = traj.step_index[idx].expand(traj.batch_size, -1)
    masked_fraction = traj.masked_fraction_before()[:, idx]
    prompt_feat = traj.prompt_feat[:, None, :].expand(-1, len(steps), -1)
    mean, std = policy(step, traj.schedule_steps, masked_fraction, prompt_feat)
    return SchedulePolicy.log_prob(mean, std, traj.sched_action[:, idx]), std


def phi_objective(policy: SchedulePolicy, traj: Trajectory, adv: torch.Tensor, steps: list[int],
                  algo: AlgoConfig, old_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """old_logp (B, len(steps)): the learner's old log-probs when they differ from the behaviour ones."""
    logp, std = phi_log_probs(policy, traj, steps)
    behaviour = traj.sched_logp[:, torch.tensor(steps)]
    old = behaviour if old_logp is None else old_logp
    logratio = logp - old
    surrogate, clipped = clipped_surrogate(logratio, adv[:, None], algo.clip_eps_phi)
    surrogate = surrogate * truncated_is_weight(old, behaviour, algo.is_cap)
    metrics = {"clip_frac_phi": clipped.float().mean().item(),
               "approx_kl_phi": ((torch.exp(logratio) - 1) - logratio).mean().item(),
               "std_phi": std.mean().item()}
    return -surrogate.mean(), metrics


def theta_lr(algo: AlgoConfig, iteration: int, iterations: int) -> float:
    """theta's learning rate at an iteration of a run of `iterations`: constant, or cosine down to the last one."""
    if algo.lr_decay == "constant":
        return algo.lr
    return algo.lr * cosine_decay(iteration / max(1, iterations - 1), algo.min_lr_ratio)


def training_phases(algo: AlgoConfig, iteration: int) -> tuple[bool, bool]:
    """(train theta, train phi) at this iteration."""
    if algo.mode == "grpo":
        return True, False
    if algo.mode == "schedule_only":
        return False, True
    if algo.update == "joint":
        return True, True
    theta_k, phi_k = algo.alternate_every, algo.alternate_every_phi or algo.alternate_every
    in_first_block = iteration % (theta_k + phi_k) < (theta_k if algo.first == "theta" else phi_k)
    theta_block = in_first_block == (algo.first == "theta")
    return theta_block, not theta_block


def samples_schedule_actions(algo: AlgoConfig, iteration: int) -> bool:
    """Whether this iteration's rollouts draw schedule actions from phi (else they take its mean action)."""
    return algo.frozen_schedule == "sampled" or training_phases(algo, iteration)[1]


class TorchStep:
    """backward, clip, step with a plain torch optimizer; returns the gradient norm. `reduce_grads` runs between
    backward and clipping (data-parallel runtimes average gradients there)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, clip: float,
                 reduce_grads: Callable[[list[torch.nn.Parameter]], None] | None = None):
        self.params, self.optimizer, self.clip, self.reduce_grads = params, optimizer, clip, reduce_grads

    def __call__(self, loss: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.reduce_grads is not None:
            self.reduce_grads(self.params)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return norm.item()


def theta_optimizer(model: torch.nn.Module, algo: AlgoConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=algo.lr, betas=(0.9, 0.99), weight_decay=algo.weight_decay)


def make_phi_step(policy: SchedulePolicy, config: Config, reduce_grads=None) -> TorchStep:
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.schedule_policy.lr)
    return TorchStep(list(policy.parameters()), optimizer, config.algo.grad_clip, reduce_grads)


def frozen_copy(model: MaskedTokenModel) -> MaskedTokenModel:
    """The KL reference: the model as training starts, frozen. Taken from the plain module, before DeepSpeed
    wraps (and under ZeRO-3 partitions) it."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class Learner:
    """Runs one update per iteration on a scored batch. `model` is what the objectives call (a DeepSpeed engine
    in the distributed runtime); the step callables own the optimisers (plain torch by default) and expose them
    as `.optimizer`, where theta's learning rate is set per iteration. With a KL term, `reference` is the frozen
    starting model (by default a copy of `model`, which must then be a plain module)."""

    def __init__(self, model: MaskedTokenModel, policy: SchedulePolicy, config: Config,
                 theta_step: Callable[[torch.Tensor], float] | None = None,
                 phi_step: Callable[[torch.Tensor], float] | None = None,
                 reference: MaskedTokenModel | None = None):
        self.model, self.policy, self.algo = model, policy, config.algo
        self.iterations = config.train.iterations
        self.theta_step = theta_step or TorchStep(list(model.parameters()), theta_optimizer(model, config.algo),
                                                  config.algo.grad_clip)
        self.phi_step = phi_step or make_phi_step(policy, config)
        self.phi_epochs = config.schedule_policy.epochs
        self.reference = None
        if self.algo.kl_beta > 0:
            self.reference = reference if reference is not None else frozen_copy(model)

    def _minibatches(self, traj: Trajectory, epochs: int):
        """(epoch, index chunks): a fresh reproducible shuffle per epoch."""
        for epoch in range(epochs):
            order = torch.randperm(traj.batch_size, generator=torch.Generator().manual_seed(traj.seed + epoch))
            yield epoch, order.split(self.algo.minibatch)

    @torch.no_grad()
    def _old_log_probs(self, traj: Trajectory, steps: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The learner's current (old) log-probs of stale samples: per committed token (B, N), per step action."""
        own = traj.commit_step[:, None, :] == torch.tensor(steps)[None, :, None]
        theta_old = (replay_log_probs(self.model, traj, steps) * own).sum(1)
        return theta_old, phi_log_probs(self.policy, traj, steps)[0]

    def update(self, batch: ScoredBatch, iteration: int, stale: bool = False) -> dict:
        """stale: the samples came from older weights than the learner's; their old log-probs are recomputed and
        the behaviour -> old ratio enters as a truncated importance weight."""
        train_theta, train_phi = training_phases(self.algo, iteration)
        self.policy.decay_std(iteration)  # as the rollout had it (idempotent; a remote learner has no rollout)
        algo = self.algo
        usable = batch.usable.nonzero().squeeze(-1)
        traj, adv = batch.traj.select(usable), batch.advantages[usable].float()
        steps = [t for t in batch.trained if traj.stochastic[t]]
        metrics: dict = {"train_theta": train_theta, "train_phi": train_phi, "usable": len(usable)}
        if len(usable) == 0 or not steps:
            return metrics
        maskgrpo = train_theta and algo.theta_likelihood == "maskgrpo"
        theta_old = phi_old = None
        if stale:
            theta_old, phi_old = self._old_log_probs(traj, steps)
        if maskgrpo:
            masks = maskgrpo_masks(traj, maskgrpo_rates(algo.maskgrpo_gamma, algo.inner_epochs))
            with torch.no_grad():
                old = [maskgrpo_log_probs(self.model, traj, m) for m in masks]
                ref = [maskgrpo_log_probs(self.reference, traj, m) for m in masks] if self.reference else None
        sums: dict[str, list[float]] = {}

        def record(m: dict) -> None:
            for k, v in m.items():
                sums.setdefault(k, []).append(v)

        if train_theta:
            metrics["lr_theta"] = theta_lr(algo, iteration, self.iterations)
            for group in self.theta_step.optimizer.param_groups:
                group["lr"] = metrics["lr_theta"]
            self.model.train()
            for epoch, chunks in self._minibatches(traj, algo.inner_epochs):
                for chunk in chunks:
                    mb, mb_adv = traj.select(chunk), adv[chunk]
                    if maskgrpo:
                        loss, m = theta_maskgrpo_objective(self.model, mb, mb_adv, masks[epoch][chunk],
                                                           old[epoch][chunk], algo, ref[epoch][chunk] if ref else None)
                    else:
                        loss, m = theta_trajectory_objective(
                            self.model, mb, mb_adv, steps, algo, None if theta_old is None else theta_old[chunk],
                            self.reference)
                    record({**m, "loss_theta": loss.item(),
                            "grad_norm_theta": self.theta_step(loss)})
        if train_phi:
            for _, chunks in self._minibatches(traj, self.phi_epochs):
                for chunk in chunks:
                    loss, m = phi_objective(self.policy, traj.select(chunk), adv[chunk], steps, algo,
                                            None if phi_old is None else phi_old[chunk])
                    record({**m, "loss_phi": loss.item(),
                            "grad_norm_phi": self.phi_step(loss)})
        self.model.eval()
        metrics.update({k: sum(v) / len(v) for k, v in sums.items()})
        return metrics
