"""The Co-GRPO learner: one update per iteration of the model policy (theta), the schedule policy (phi) or both,
as the alternation says, over a scored batch. Free of any runtime and any model family: both runtimes call
`Learner.update`, and the family's likelihood estimator turns trajectories into per-step action log-probs."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cogrpo.learner.objectives import cosine_decay, phi_log_probs, phi_objective, theta_objective
from cogrpo.learner.ranks import ONE_PROCESS, Ranks
from cogrpo.models.schedule_policy import SchedulePolicy
from cogrpo.proto.config import AlgoConfig, Config
from cogrpo.proto.family import ActionLogProbs, Estimator, Family
from cogrpo.proto.messages import Trajectory


@dataclass
class ScoredBatch:
    traj: Trajectory
    advantages: torch.Tensor  # (B,) group-relative, 0 for unusable samples
    usable: torch.Tensor  # (B,) bool
    trained: torch.Tensor  # (B, T) bool: the executed steps each sample trains


def theta_lr(algo: AlgoConfig, iteration: int, iterations: int) -> float:
    """theta's learning rate at an iteration of a run of `iterations`: constant, or cosine down to the last one."""
    if algo.lr_decay == "constant":
        return algo.lr
    return algo.lr * cosine_decay(iteration / max(1, iterations - 1), algo.min_lr_ratio)


Loss = torch.Tensor | Sequence[Callable[[], torch.Tensor]]


def loss_parts(loss: Loss) -> Sequence[Callable[[], torch.Tensor]]:
    """What an optimiser step back-propagates: a loss, or the builders of parts that sum to it, each built and
    back-propagated in turn so that only one part's graph is alive."""
    return [lambda: loss] if isinstance(loss, torch.Tensor) else loss


class TorchStep:
    """backward (of every part of the loss), clip, step with a plain torch optimizer; returns the gradient norm.
    `reduce_grads` runs between backward and clipping (data-parallel runtimes average gradients there)."""

    def __init__(self, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, clip: float,
                 reduce_grads: Callable[[list[torch.nn.Parameter]], None] | None = None):
        self.params, self.optimizer, self.clip, self.reduce_grads = params, optimizer, clip, reduce_grads

    def __call__(self, loss: Loss) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        for part in loss_parts(loss):
            part().backward()
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


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The KL reference: the model as training starts, frozen. Taken from the plain module, before DeepSpeed
    wraps (and under ZeRO-3 partitions) it."""
    return copy.deepcopy(model).eval().requires_grad_(False)


class Learner:
    """Runs one update per iteration on a scored batch. `model` is what the estimator calls (a DeepSpeed engine
    in the distributed runtime); the step callables own the optimisers (plain torch by default) and expose them
    as `.optimizer`, where theta's learning rate is set per iteration. With a KL term, `reference` is the frozen
    starting model (by default a copy of `model`, which must then be a plain module). `ranks`: where this learner
    sits among data-parallel ranks, which train their shares of the same minibatches (learner/ranks.py)."""

    def __init__(self, model: torch.nn.Module, policy: SchedulePolicy, config: Config, family: Family,
                 theta_step: Callable[[Loss], float] | None = None,
                 phi_step: Callable[[torch.Tensor], float] | None = None,
                 reference: torch.nn.Module | None = None, ranks: Ranks = ONE_PROCESS):
        self.model, self.policy, self.algo, self.ranks = model, policy, config.algo, ranks
        self.estimator = family.estimator(config.algo.theta_likelihood, config.algo)
        # an estimator whose scores are not the sampler's weighs stale samples by the sampler's own likelihood
        self.replay = family.estimator("trajectory", config.algo) if config.algo.theta_likelihood != "trajectory" \
            else None
        self.forward = None if config.algo.theta_objective == "clipped" else \
            family.forward_objective(config.algo.theta_objective, config.algo)
        self.iterations = config.train.iterations
        self.theta_step = theta_step or TorchStep(list(model.parameters()), theta_optimizer(model, config.algo),
                                                  config.algo.grad_clip)
        self.phi_step = phi_step or make_phi_step(policy, config)
        self.phi_epochs = config.schedule_policy.epochs
        self.reference = None
        if self.algo.kl_beta > 0:
            self.reference = reference if reference is not None else frozen_copy(model)

    def _minibatches(self, traj: Trajectory, epochs: int):
        """(epoch, index chunks): a fresh reproducible shuffle per epoch, in minibatches of which this rank takes
        its share. With several ranks a last minibatch smaller than their number joins the one before, so that
        every rank takes part in every step (the collectives need them all)."""
        for epoch in range(epochs):
            order = torch.randperm(traj.batch_size, generator=torch.Generator().manual_seed(traj.seed + epoch))
            chunks = list(order.split(self.algo.minibatch))
            if len(chunks) > 1 and len(chunks[-1]) < self.ranks.world:  # no rank's share may be empty
                chunks[-2:] = [torch.cat(chunks[-2:])]
            yield epoch, [self.ranks.share(chunk) for chunk in chunks]

    def update(self, batch: ScoredBatch, iteration: int, stale: bool = False) -> dict:
        """stale: the samples came from older weights than the learner's; their old log-probs are recomputed and
        the behaviour -> old ratio enters as a truncated importance weight."""
        train_theta, train_phi = self.algo.phases(iteration)
        self.policy.decay_std(iteration)  # as the rollout had it (idempotent; a remote learner has no rollout)
        usable = batch.usable.nonzero().squeeze(-1)
        traj, adv, trained = batch.traj.select(usable), batch.advantages[usable].float(), batch.trained[usable]
        steps = [t for t in range(traj.steps) if bool(trained[:, t].any()) and traj.stochastic[t]]
        metrics: dict = {"train_theta": train_theta, "train_phi": train_phi, "usable": len(usable)}
        if len(usable) < self.ranks.world or not (steps or self.forward):  # every rank holds the batch: all agree
            return metrics
        select = trained[:, steps]
        phi_old = None
        if stale and train_phi:
            with torch.no_grad():
                phi_old = phi_log_probs(self.policy, traj, steps)[0]
        rows: list[dict] = []
        if train_theta:
            metrics["lr_theta"] = theta_lr(self.algo, iteration, self.iterations)
            for group in self.theta_step.optimizer.param_groups:
                group["lr"] = metrics["lr_theta"]
            rows += self._update_theta(traj, adv, steps, select, stale) if self.forward is None else \
                self._update_theta_forward(traj, adv)
        if train_phi and steps:
            for _, chunks in self._minibatches(traj, self.phi_epochs):
                for chunk in chunks:
                    loss, m = phi_objective(self.policy, traj.select(chunk), adv[chunk], steps, select[chunk],
                                            self.algo, None if phi_old is None else phi_old[chunk],
                                            self.ranks.denominator)
                    rows.append({**m, "loss_phi": loss.item(), "grad_norm_phi": self.phi_step(loss)})
        self.model.eval()
        keys = dict.fromkeys(k for row in rows for k in row)
        metrics.update({k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in keys})
        return metrics

    def _update_theta(self, traj: Trajectory, adv: torch.Tensor, steps: list[int], select: torch.Tensor,
                      stale: bool) -> list[dict]:
        """Inner epochs of clipped-surrogate steps on theta; old log-probs are the sampler's when the samples are
        fresh and the estimator replays the sampler, else theta's before this update, on identical inputs."""
        estimator, algo = self.estimator, self.algo
        inputs = estimator.inputs(traj, algo.inner_epochs)
        behaviour = estimator.behaviour(traj, steps)
        olds, stale_log_weight = None, None
        if behaviour is None or stale:
            olds = [self._replay(estimator, self.model, traj, steps, view, select).logp for view in inputs]
            if behaviour is None and stale:
                stale_log_weight = self._stale_log_weight(traj, steps, select)
        rows = []
        for epoch, chunk, mb, mb_view in self._theta_minibatches(traj, inputs):
            old = behaviour[chunk] if olds is None else olds[epoch % len(olds)][chunk]
            ref_logp = None
            if self.reference is not None:
                ref_logp = self._replay(estimator, self.reference, mb, steps, mb_view, select[chunk]).logp
            mb_behaviour = None if behaviour is None else behaviour[chunk]
            if stale_log_weight is not None:  # the behaviour that makes exp(old - behaviour) the sample's weight
                mb_behaviour = old - stale_log_weight[chunk, None, None]

            def objective(logp, mask, old=old, mb_behaviour=mb_behaviour, adv=adv[chunk], ref_logp=ref_logp):
                return theta_objective(logp, mask, old, mb_behaviour, adv, algo, ref_logp, self.ranks.denominator)

            loss, value, m = self._theta_loss(mb, steps, mb_view, select[chunk], objective)
            rows.append({**m, "loss_theta": value, "grad_norm_theta": self.theta_step(loss)})
        return rows

    def _chunks(self, estimator: Estimator, batch_size: int,
                steps: list[int]) -> tuple[list[torch.Tensor], list[slice]]:
        """(sample groups, step groups) of the blocks one replay runs at a time: at most `replay_chunk` (sample,
        step) pairs each (an estimator that does not score steps: samples); without it, everything at once."""
        chunk = self.algo.replay_chunk
        if not chunk:
            return [torch.arange(batch_size)], [slice(0, len(steps))]
        per_step = min(chunk, len(steps)) if estimator.scores_steps else len(steps)
        per_sample = max(1, chunk // per_step) if estimator.scores_steps else chunk
        return list(torch.arange(batch_size).split(per_sample)), [slice(s, s + per_step)
                                                                   for s in range(0, len(steps), per_step)]

    def _block(self, estimator: Estimator, model: torch.nn.Module, traj: Trajectory, steps: list[int],
               view: dict[str, torch.Tensor], select: torch.Tensor, rows: torch.Tensor, g: slice) -> ActionLogProbs:
        return estimator.log_probs(model, traj.select(rows), steps[g], {k: v[rows] for k, v in view.items()},
                                   select[rows][:, g])

    @torch.no_grad()
    def _replay(self, estimator: Estimator, model: torch.nn.Module, traj: Trajectory, steps: list[int],
                view: dict[str, torch.Tensor], select: torch.Tensor) -> ActionLogProbs:
        """Log-probs without gradients (old, reference, stale-weight and chunked replays), block by block, so they
        peak at one block."""
        row_groups, step_groups = self._chunks(estimator, traj.batch_size, steps)
        if len(row_groups) == len(step_groups) == 1:
            return estimator.log_probs(model, traj, steps, view, select)
        blocks = [[self._block(estimator, model, traj, steps, view, select, rows, g) for g in step_groups]
                  for rows in row_groups]
        return ActionLogProbs(*(torch.cat([torch.cat([getattr(b, field) for b in row], 1) for row in blocks])
                                for field in ("logp", "mask")))

    def _theta_loss(self, mb: Trajectory, steps: list[int], view: dict[str, torch.Tensor], select: torch.Tensor,
                    objective: Callable) -> tuple[Loss, float, dict]:
        """(what theta's step back-propagates, the loss's value, its metrics). In blocks: the loss and its gradient
        with respect to the log-probs come from a no-grad replay, then each block is replayed with gradients and
        back-propagated against its share of that gradient: exactly the whole loss's gradient, with one block's
        graph alive at a time."""
        row_groups, step_groups = self._chunks(self.estimator, mb.batch_size, steps)
        if len(row_groups) == len(step_groups) == 1:
            scored = self.estimator.log_probs(self.model, mb, steps, view, select)
            loss, metrics = objective(scored.logp, scored.mask)
            return loss, loss.item(), metrics
        scored = self._replay(self.estimator, self.model, mb, steps, view, select)
        logp = scored.logp.requires_grad_()
        loss, metrics = objective(logp, scored.mask)
        (grad,) = torch.autograd.grad(loss, logp)

        def part(rows: torch.Tensor, g: slice) -> Callable[[], torch.Tensor]:
            return lambda: (self._block(self.estimator, self.model, mb, steps, view, select, rows, g).logp
                            * grad[rows][:, g]).sum()
        return [part(rows, g) for rows in row_groups for g in step_groups
                if not self.estimator.scores_steps or bool(select[rows][:, g].any())], loss.item(), metrics

    def _stale_log_weight(self, traj: Trajectory, steps: list[int], select: torch.Tensor) -> torch.Tensor:
        """(B,): log of a stale sample's behaviour -> old weight for an estimator with no per-action behaviour
        log-probs (a re-masking one): the sampler's own actions replayed under the old weights against their recorded
        log-probs, averaged per action (a geometric-mean ratio, so its size does not grow with the sample's length).
        The objective truncates it as it does per-action weights."""
        replayed = self._replay(self.replay, self.model, traj, steps, {}, select)
        recorded = self.replay.behaviour(traj, steps)
        mask = replayed.mask
        return ((replayed.logp - recorded) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)

    def _update_theta_forward(self, traj: Trajectory, adv: torch.Tensor) -> list[dict]:
        """Inner epochs of a likelihood-free objective's steps on theta; the old predictions are theta's before
        this update (the samples' policy when they are fresh), on identical inputs."""
        objective = self.forward
        inputs = objective.inputs(traj, self.algo.inner_epochs)
        with torch.no_grad():
            olds = [objective.prediction(self.model, traj, view) for view in inputs]
        rows = []
        for epoch, chunk, mb, mb_view in self._theta_minibatches(traj, inputs):
            old = olds[epoch % len(olds)][chunk]
            reference = None
            if self.reference is not None:
                with torch.no_grad():
                    reference = objective.prediction(self.reference, mb, mb_view)
            loss, m = objective.loss(self.model, mb, mb_view, old, adv[chunk], reference, self.ranks.denominator)
            rows.append({**m, "loss_theta": loss.item(), "grad_norm_theta": self.theta_step(loss)})
        return rows

    def _theta_minibatches(self, traj: Trajectory, inputs: list[dict[str, torch.Tensor]]):
        """(epoch, chunk, the chunk's trajectories, its share of the epoch's inputs), theta in training mode."""
        self.model.train()
        for epoch, chunks in self._minibatches(traj, self.algo.inner_epochs):
            view = inputs[epoch % len(inputs)]
            for chunk in chunks:
                yield epoch, chunk, traj.select(chunk), {k: v[chunk] for k, v in view.items()}
