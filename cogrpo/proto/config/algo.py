"""The algorithm's config: which policies train when, on which steps, with which objective."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from cogrpo.proto.config.base import Section


class StepSubsetConfig(Section):
    """Which decoding steps are trained: all; a random fraction (DanceGRPO), drawn per iteration or per sample; or
    a MixGRPO sliding window of `window` steps, moved by `stride` every `shift_every` iterations, with the steps
    outside it decoded deterministically (MixGRPO's ODE segments; a masked model's greedy decoding) or
    stochastically but untrained, and, with `flash_ratio`, fewer steps after it (a flow model's taken by a
    second-order solver)."""

    # none: every step deterministic and none replayed, for a likelihood-free theta objective (DiffusionNFT)
    mode: Literal["all", "random", "window", "none"] = "all"
    fraction: float = Field(0.5, gt=0, le=1)
    random_per: Literal["iteration", "sample"] = "iteration"  # random: one subset for all samples, or one each
    outside: Literal["deterministic", "stochastic"] = "deterministic"  # window: how the steps outside it decode
    window: int = Field(4, ge=1)
    shift_every: int = Field(25, ge=1)
    stride: int = Field(1, ge=0)
    shift: Literal["progressive", "random"] = "progressive"  # window: by stride, or anywhere (MixGRPO's ablation)
    flash_ratio: float | None = Field(None, gt=0, le=1)


class AlgoConfig(Section):
    mode: Literal["cogrpo", "grpo", "schedule_only"] = "cogrpo"
    # cogrpo: alternate `alternate_every` iterations on theta (phi frozen) and `alternate_every_phi` (default: the
    # same) on phi (theta frozen), or joint. A phi iteration costs a rollout alone, a theta one a rollout and a
    # replay with gradients, so longer phi blocks buy schedule updates cheaply.
    update: Literal["alternating", "joint"] = "alternating"
    alternate_every: int = Field(5, ge=1)
    alternate_every_phi: int | None = Field(None, ge=1)
    # How the rollouts of an iteration that trains theta alone act the frozen schedule policy: with sampled actions
    # (exploration noise, as in phi's iterations) or with its mean action, the schedule evaluation decodes with.
    frozen_schedule: Literal["sampled", "mean"] = "sampled"
    first: Literal["theta", "phi"] = "theta"
    group_size: int = Field(8, ge=2)
    # PODS: roll out this many samples per prompt and train on the group_size of them whose rewards vary most
    # (max-variance down-sampling): rollouts are cheap beside an update. None: roll out group_size.
    rollouts_per_prompt: int | None = Field(None, ge=2)
    prompts_per_iteration: int = Field(8, ge=1)
    # Dynamic sampling: roll out this many prompts per iteration and train on the prompts_per_iteration whose
    # groups' combined rewards vary most (a group whose samples all score alike teaches next to nothing).
    # None: roll out prompts_per_iteration, all trained.
    candidate_prompts: int | None = Field(None, ge=1)
    inner_epochs: int = Field(1, ge=1)
    minibatch: int = Field(64, ge=1)
    clip_eps: float = Field(0.2, gt=0)
    clip_eps_phi: float = Field(0.2, gt=0)
    ratio: Literal["token_mean", "step_product"] = "token_mean"
    # token_mean's average: each trained step's tokens averaged, then the steps ("step"), or every committed
    # token of the sample weighted alike ("token", the plain policy gradient's weighting)
    token_average: Literal["step", "token"] = "step"
    kl_beta: float = Field(0.0, ge=0)
    adv_eps: float = Field(1e-4, gt=0)
    adv_clip: float | None = Field(None, gt=0)
    is_cap: float = Field(2.0, ge=1)  # truncation of the behaviour -> old importance weight
    lr: float = Field(5e-5, gt=0)
    # theta's learning rate over the run: constant, or a cosine from lr down to min_lr_ratio * lr at the last
    # iteration, so the model the run ends with has settled instead of still taking full-size steps.
    lr_decay: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # > 0: the run evaluates and exports an exponential moving average of theta with this decay per theta
    # iteration (cogrpo/learner/averaging.py); rollouts sample the live weights either way
    ema_decay: float = Field(0.0, ge=0, lt=1)
    theta_likelihood: Literal["trajectory", "maskgrpo", "d1", "unigrpo"] = "trajectory"
    # theta's objective: the clipped surrogate on replayed log-probs, or DiffusionNFT's likelihood-free one on the
    # forward process (a flow family's): the implicit positive policy (1 - nft_beta) v_old + nft_beta v and negative
    # (1 + nft_beta) v_old - nft_beta v, weighted by 1/2 + clip(A / nft_adv_clip, -1, 1) / 2 and its complement
    theta_objective: Literal["clipped", "nft"] = "clipped"
    nft_beta: float = Field(1.0, gt=0)
    nft_adv_clip: float = Field(5.0, gt=0)
    maskgrpo_gamma: float = Field(0.8, ge=0, lt=1)
    # The memory of theta's update. replay_chunk > 0: a minibatch is replayed in blocks of at most this many
    # (sample, step) pairs (samples, for an estimator that does not score steps), each back-propagated before the
    # next is built (exact: the loss is a sum over them; it costs one no-grad replay more), so the peak stays that
    # of one block however many steps train and however large the minibatch; 0: all at once.
    # activation_checkpointing: the backbone's blocks recompute their activations in backward.
    replay_chunk: int = Field(0, ge=0, le=1024)
    activation_checkpointing: bool = False
    steps: StepSubsetConfig = StepSubsetConfig()

    @model_validator(mode="after")
    def _consistent(self) -> AlgoConfig:
        if self.rollouts_per_prompt is not None and self.rollouts_per_prompt < self.group_size:
            raise ValueError(f"rollouts_per_prompt {self.rollouts_per_prompt} is below group_size "
                             f"{self.group_size}: down-sampling keeps group_size of them")
        if self.candidate_prompts is not None and self.candidate_prompts < self.prompts_per_iteration:
            raise ValueError(f"candidate_prompts {self.candidate_prompts} is below prompts_per_iteration "
                             f"{self.prompts_per_iteration}: selection keeps prompts_per_iteration of them")
        if self.steps.mode == "none" and (self.theta_objective == "clipped" or self.mode != "grpo"):
            raise ValueError("algo.steps.mode none samples no step: it needs algo.theta_objective nft and mode grpo "
                             "(the clipped surrogate and the schedule policy learn from sampled steps)")
        if self.theta_likelihood == "maskgrpo" and self.inner_epochs < 2:
            raise ValueError("theta_likelihood maskgrpo re-masks at rates rising over the inner epochs; with "
                             "inner_epochs 1 its one rate is 0.999, the fully masked sample with no truncation: set "
                             "algo.inner_epochs (MaskGRPO: 12 for text, 6 for images)")
        if self.token_average == "token" and self.ratio != "token_mean":
            raise ValueError("token_average: token needs ratio: token_mean (step_product has one ratio per step)")
        return self

    def phases(self, iteration: int) -> tuple[bool, bool]:
        """(train theta, train phi) at this iteration."""
        if self.mode == "grpo":
            return True, False
        if self.mode == "schedule_only":
            return False, True
        if self.update == "joint":
            return True, True
        theta_k, phi_k = self.alternate_every, self.alternate_every_phi or self.alternate_every
        in_first_block = iteration % (theta_k + phi_k) < (theta_k if self.first == "theta" else phi_k)
        theta_block = in_first_block == (self.first == "theta")
        return theta_block, not theta_block

    def samples_schedule_actions(self, iteration: int) -> bool:
        """Whether this iteration's rollouts draw schedule actions from phi (else they take its mean action)."""
        return self.frozen_schedule == "sampled" or self.phases(iteration)[1]

    @property
    def samples_per_prompt(self) -> int:
        """How many samples each prompt is rolled out and scored with."""
        return self.rollouts_per_prompt or self.group_size

    @property
    def rollout_prompts(self) -> int:
        """How many prompts an iteration rolls out and scores."""
        return self.candidate_prompts or self.prompts_per_iteration


