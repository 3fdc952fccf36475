"""The flow family's trajectory sampler: rectified-flow decoding from noise at t = 1 to an image at t = 0, every
knob settable per step and per sample, recording what an RL learner needs.

One executed step, given knobs (step_fraction f, noise_level a, guidance w) at time t:
  v      = v_c + w (v_c - v_u)                     classifier-free guidance (w = 0: one forward pass)
  t_next = t (1 - f) (1 - f_s)...                  f, then the hand fractions of the schedule steps a plan skips
  SDE    x_next ~ N(mean, std^2)                   Flow-GRPO's step with the ODE's marginals; its log-prob recorded
  ODE    x_next = x + (t_next - t) v               Euler, or DPM-Solver++(2M) where the plan asks (Flash)
The last step lands on t = 0 (its fraction is 1, not the policy's to move).

A trajectory's named tensors: `cond`, `latents` (B, T + 1, N, C: before each executed step, then the result),
`times` (B, T + 1) and `step_logp` (B, T: each SDE transition's log-density averaged over its elements, as
Flow-GRPO does; 0 on ODE steps). `replay_log_probs` recomputes them with gradients.
"""

from __future__ import annotations

import torch

from cogrpo.models.schedule_policy import ScheduleEncoder
from cogrpo.models.tiny_flow import TinyFlow
from cogrpo.proto.config import SchedulePolicyConfig
from cogrpo.proto.kinds import FLOW_IMAGE_KNOBS
from cogrpo.proto.messages import Trajectory
from cogrpo.rollout.flow_image.solvers import (data_prediction, dpm_solver_2m_step, euler_step, sde_log_prob,
                                               sde_mean_std)
from cogrpo.rollout.schedule import DecisionLog

_F, _A, _W = (tuple(knob.name for knob in FLOW_IMAGE_KNOBS).index(k)
              for k in ("step_fraction", "noise_level", "guidance"))


class FlowScheduleInputs(ScheduleEncoder):
    """What the schedule policy reads of a flow decoding besides the step: the time t (the noise level left) and,
    with `canvas_input: pooled`, the latent averaged over patches."""

    def __init__(self, model: TinyFlow, config: SchedulePolicyConfig):
        pooled = config.canvas_input == "pooled"
        super().__init__(model, config, state_dim=1 + (model.latent_shape[1] if pooled else 0))
        self.pooled = pooled

    def state(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.pooled:
            return t.float().cpu()[:, None]
        return torch.cat([t.float().cpu()[:, None], x.float().mean(1).cpu()], 1)


def guided_velocity(model: TinyFlow, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                    guidance: torch.Tensor) -> torch.Tensor:
    if bool((guidance == 0).all()):
        return model(x, t, cond)
    v_cond, v_null = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null])).chunk(2)
    return v_cond + guidance[:, None, None] * (v_cond - v_null)


def skipped_factors(hand: torch.Tensor, plan: list[int]) -> torch.Tensor:
    """(len(plan),): per executed step, the product of (1 - f) over the schedule steps it jumps (flash plans)."""
    fractions = hand[:, _F].double()
    return torch.tensor([float(torch.prod(1 - fractions[s + 1:e])) for s, e in zip(plan, plan[1:] + [plan[-1] + 1])])


def _per_sample(value: torch.Tensor) -> torch.Tensor:
    return value[:, None, None]


@torch.no_grad()
def generate(model: TinyFlow, cond: torch.Tensor, schedule, hand: torch.Tensor, seed: int, plan: list[int],
             stochastic: torch.Tensor, effective: torch.Tensor, second_order: torch.Tensor,
             t_cap: float, noise_group: int = 1) -> Trajectory:
    """Decode a batch from Gaussian noise and record its trajectory. Deterministic for a seed.

    hand: the hand schedule (steps, K); plan: the schedule steps executed, in order, ending on the last;
    stochastic (len(plan),): SDE steps (the others ODE, with the mean schedule action and no log-prob);
    effective (len(plan), K): the knobs that can change the outcome per step; second_order (len(plan),): ODE steps
    taken by DPM-Solver++(2M); t_cap: where sigma's denominator is capped (the grid's first time below 1);
    noise_group: consecutive samples that start from the same noise."""
    steps = len(hand)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    noise = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)
    b = cond.shape[0]
    cond_cpu, cond = cond, cond.to(device)
    null = model.null_conditioning(b).to(device)
    encoder = FlowScheduleInputs(model, SchedulePolicyConfig()) if schedule.encoder is None else schedule.encoder
    prompt_feat = encoder.prompt(model, cond_cpu)
    skipped = skipped_factors(hand, plan)
    starts = torch.randn((-(-b // noise_group), *model.latent_shape), generator=noise, device=device)
    x = starts.repeat_interleave(noise_group, 0)[:b]
    t = torch.ones(b, device=device)
    latents, times, step_logp = [x], [t], []
    log = DecisionLog(prompt_feat)
    previous = None  # the last (x0, t) DPM-Solver++(2M) extrapolates from
    was_training = model.training
    model.eval()
    try:
        for i, schedule_step in enumerate(plan):
            state = encoder.state(x, t)
            decision = schedule.decide(schedule_step, steps, state, prompt_feat, bool(stochastic[i]), generator,
                                       effective[i])
            k = decision.knobs.to(device)
            t_next = (t * (1 - k[:, _F]) * skipped[i]).float()
            v = guided_velocity(model, x, t, cond, null, k[:, _W])
            if stochastic[i]:
                mean, std = sde_mean_std(x, v, _per_sample(t), _per_sample(t_next), _per_sample(k[:, _A]), t_cap)
                x_next = mean + std * torch.randn(x.shape, generator=noise, device=device)
                step_logp.append(sde_log_prob(x_next, mean, std).mean((1, 2)))
                previous = None
            else:
                if second_order[i]:
                    x0 = data_prediction(x, v, _per_sample(t))
                    x_next = dpm_solver_2m_step(x, x0, _per_sample(t), _per_sample(t_next), previous)
                    previous = (x0, _per_sample(t))
                else:
                    x_next = euler_step(x, v, _per_sample(t), _per_sample(t_next))
                step_logp.append(torch.zeros(b, device=device))
            x, t = x_next, t_next
            latents.append(x)
            times.append(t)
            log.record(state, decision)
    finally:
        model.train(was_training)
    return log.trajectory({"cond": cond_cpu, "latents": torch.stack(latents, 1).cpu(),
                           "times": torch.stack(times, 1).cpu(), "step_logp": torch.stack(step_logp, 1).cpu()},
                          stochastic, plan, steps, seed)


def replay_log_probs(model: TinyFlow, traj: Trajectory, steps: list[int], t_cap: float,
                     select: torch.Tensor | None = None) -> torch.Tensor:
    """The recorded SDE transitions' log-densities under the model, averaged over elements: (B, len(steps), 1).
    Differentiable; one batched forward pass for the selected (sample, step) pairs (the others are 0; none: no
    pass)."""
    b, device = traj.batch_size, model.device
    latents, times, cond = traj.tensors["latents"], traj.tensors["times"], traj.tensors["cond"]
    idx = torch.tensor(steps)
    x, x_next = latents[:, idx].transpose(0, 1).flatten(0, 1), latents[:, idx + 1].transpose(0, 1).flatten(0, 1)
    t, t_next = times[:, idx].T.flatten(), times[:, idx + 1].T.flatten()
    knobs = traj.knobs[:, idx].transpose(0, 1).flatten(0, 1)
    conds = cond.repeat(len(steps), *([1] * (cond.dim() - 1)))
    rows = torch.ones(len(steps) * b, dtype=torch.bool) if select is None else select.T.reshape(-1)
    if not bool(rows.any()):
        return torch.zeros(b, len(steps), 1)
    x, x_next, t, t_next, knobs, conds = (v[rows].to(device) for v in (x, x_next, t, t_next, knobs, conds))
    v = guided_velocity(model, x, t, conds, model.null_conditioning(len(conds)).to(device), knobs[:, _W])
    mean, std = sde_mean_std(x, v, _per_sample(t), _per_sample(t_next), _per_sample(knobs[:, _A]), t_cap)
    logp = sde_log_prob(x_next, mean, std).mean((1, 2)).to(latents.device)
    full = logp.new_zeros(len(steps) * b)
    full[rows] = logp
    return full.view(len(steps), b).T[..., None]
