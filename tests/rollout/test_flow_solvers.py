"""The flow family's step math on an analytic flow: data x_0 ~ N(mu, s^2), whose rectified-flow velocity is known
in closed form, and whose ODE carries noise eps exactly to mu + s eps."""

import math

import pytest
import torch
from torch.distributions import Normal

from cogrpo.rollout.flow_image.solvers import (data_prediction, dpm_solver_2m_step, euler_step, sde_log_prob,
                                              sde_mean_std, time_grid)

MU, S = 1.5, 0.5


def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """E[eps - x_0 | x_t = x] for x_t = (1 - t) x_0 + t eps, x_0 ~ N(MU, S^2), eps ~ N(0, 1)."""
    var = (1 - t) ** 2 * S * S + t * t
    centred = x - (1 - t) * MU
    return (t - (1 - t) * S * S) * centred / var - MU


def solve(x: torch.Tensor, grid: torch.Tensor, method: str, a: float = 0.0,
          generator: torch.Generator | None = None) -> torch.Tensor:
    previous = None
    for t, t_next in zip(grid[:-1].tolist(), grid[1:].tolist()):
        v = velocity(x, t)
        if method == "euler":
            x = euler_step(x, v, t, t_next)
        elif method == "dpm":
            x0 = data_prediction(x, v, t)
            x, previous = dpm_solver_2m_step(x, x0, t, t_next, previous), (x0, t)
        else:
            mean, std = sde_mean_std(x, v, t, t_next, a, t_cap=grid[1].item())
            x = mean + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return x


def test_the_sde_steps_log_prob_is_the_gaussian_density():
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    mean, std = sde_mean_std(x, v, 0.6, 0.5, a=0.7, t_cap=0.95)
    assert std == pytest.approx(0.7 * math.sqrt(0.6 / 0.4) * math.sqrt(0.1))
    x_next = mean + std * torch.randn(4, 3)
    assert torch.allclose(sde_log_prob(x_next, mean, std), Normal(mean, std).log_prob(x_next), atol=1e-5)


def test_euler_is_first_order_and_dpm_solver_2m_second_order_on_an_analytic_flow():
    eps = torch.linspace(-2, 2, 9, dtype=torch.float64)
    exact = MU + S * eps
    errors = {}
    for method in ("euler", "dpm"):
        errors[method] = [(solve(eps, time_grid(n), method) - exact).abs().max().item() for n in (20, 40, 80)]
    euler, dpm = errors["euler"], errors["dpm"]
    assert 1.8 < euler[0] / euler[1] < 2.2 and 1.8 < euler[1] / euler[2] < 2.2  # halving h halves the error
    assert dpm[0] / dpm[1] > 3.3 and dpm[1] / dpm[2] > 3.5  # ... and quarters it: second order
    assert dpm[2] < euler[2] / 5


def test_the_sde_keeps_the_odes_marginals():
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn(40_000, dtype=torch.float64, generator=generator)
    x0 = solve(eps, time_grid(50), "sde", a=0.7, generator=generator)
    assert x0.mean().item() == pytest.approx(MU, abs=0.03)
    assert x0.std().item() == pytest.approx(S, abs=0.03)
    assert not torch.allclose(x0, MU + S * eps, atol=0.1)  # the noise moved the samples, not the distribution


def test_the_time_grid_runs_from_noise_to_data_and_shifts_toward_noise():
    plain, shifted = time_grid(8), time_grid(8, shift=3.0)
    for grid in (plain, shifted):
        assert grid[0] == 1 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()
    assert (shifted[1:-1] > plain[1:-1]).all()
