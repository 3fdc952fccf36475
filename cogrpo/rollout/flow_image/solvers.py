"""The step math of rectified-flow models, where x_t = (1 - t) x_0 + t eps, the model predicts the velocity
v = eps - x_0, and sampling runs t from 1 (noise) to 0 (data).

- `time_grid`: the executed times, with SD3's shift t' = s t / (1 + (s - 1) t) toward the noisy end.
- `euler_step`: the ODE step x_next = x + (t_next - t) v.
- `sde_mean_std`, `sde_log_prob`: Flow-GRPO's SDE with the ODE's marginals. From t to t_next = t - h (h > 0) the
  reverse-time SDE dx = [v - (sigma^2 / 2) score] dt + sigma dw, with the score -(x + (1 - t) v) / t, gives the
  Gaussian step x_next ~ N(x - h v - sigma^2 h / (2 t) (x + (1 - t) v), sigma^2 h), sigma = a sqrt(t / (1 - t)).
  Its log-density is exact.
- `dpm_solver_2m_step`: DPM-Solver++(2M) written for rectified flow: data prediction x0 = x - t v, signal and noise
  scales 1 - t and t, log-SNR lambda = log((1 - t) / t). Its first-order step is exactly Euler's.
"""

from __future__ import annotations

import math

import torch

Time = float | torch.Tensor  # a time or noise level: one for all, or a tensor broadcasting against x


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift: more of the steps spent near the noisy end when shift > 1."""
    return shift * t / (1 + (shift - 1) * t)


def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """(steps + 1,) float64 times from 1 down to 0."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    return x + (t_next - t) * v


def sde_sigma(t: Time, a: Time, t_cap: float) -> Time:
    """sigma_t = a sqrt(t / (1 - t)), with t in the denominator capped below 1 (it diverges at t = 1, the start)."""
    if isinstance(t, torch.Tensor):
        return a * torch.sqrt(t / (1 - t.clamp(max=t_cap)))
    return a * math.sqrt(t / (1 - min(t, t_cap)))


def sde_mean_std(x: torch.Tensor, v: torch.Tensor, t: Time, t_next: Time, a: Time,
                 t_cap: float) -> tuple[torch.Tensor, Time]:
    """The Gaussian SDE step's mean and standard deviation from x at t to t_next < t, noise level a (floats, or
    tensors that broadcast against x: one value per sample)."""
    h = t - t_next
    sigma = sde_sigma(t, a, t_cap)
    mean = x - h * v - (sigma * sigma * h / (2 * t)) * (x + (1 - t) * v)
    return mean, sigma * (h ** 0.5)


def _log(value: Time) -> Time:
    return torch.log(value) if isinstance(value, torch.Tensor) else math.log(value)


def sde_log_prob(x_next: torch.Tensor, mean: torch.Tensor, std: Time) -> torch.Tensor:
    """The Gaussian log-density of each element of x_next (same shape as x_next)."""
    z = (x_next - mean) / std
    return -0.5 * z * z - _log(std) - 0.5 * math.log(2 * math.pi)


def data_prediction(x: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
    """x0 implied by the velocity at t."""
    return x - t * v


def dpm_solver_2m_step(x: torch.Tensor, x0: torch.Tensor, t: Time, t_next: Time,
                       previous: tuple[torch.Tensor, Time] | None) -> torch.Tensor:
    """One DPM-Solver++(2M) step from t to t_next, given the data prediction x0 at t and the previous step's
    (x0, t) if there was one; first order (Euler's step) at the first step (t = 1, where lambda is -infinity).
    Into t_next = 0, where lambda is +infinity, the step is the data prediction extrapolated linearly in t from the
    last two: a first-order final step there would cost the whole solver its second order. Times are floats or
    per-sample tensors broadcasting against x; a batch starts at t = 1 and ends at 0 together."""
    if previous is None or bool(torch.as_tensor(previous[1] >= 1.0).all()):
        return (t_next / t) * x + ((t - t_next) / t) * x0
    x0_prev, t_prev = previous
    if bool(torch.as_tensor(t_next <= 0.0).all()):
        return x0 + (x0 - x0_prev) * t / (t_prev - t)
    lam_prev, lam, lam_next = (_log((1 - s) / s) for s in (t_prev, t, t_next))
    r = (lam - lam_prev) / (lam_next - lam)
    corrected = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    return (t_next / t) * x + ((t - t_next) / t) * corrected
