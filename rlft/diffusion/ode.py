"""Deterministic solvers for the steps that carry no log-probability: every step of a
deterministic sampler (`policy.deterministic=true`: DiffusionNFT samples so, it needs no
log-probability), or the steps outside an SDE window.

- `euler`: the family's first-order step, Euler's x + v dt for a flow model, DDIM with eta 0
  for a DDIM model (the Euler step of the probability-flow ODE in DDIM's parametrisation).
- `dpm2`: DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095), multistep second order in data
  prediction, on a rectified-flow schedule (alpha = 1 - sigma): DiffusionNFT's default sampler
  (its `solver="dpm2"`). Written here as a function of the schedule's sigmas, so that a step
  needs only the previous step's data prediction; tests check it against diffusers'
  `DPMSolverMultistepScheduler` (flow sigmas, flow prediction, midpoint) on the same sigmas.

A solver is made fresh for each batch of trajectories (`Sampler.ode_solver()`): `dpm2`
remembers the previous step's data prediction, and `observe` lets it see the stochastic
steps' predictions too (an SDE window between ODE steps).
"""

import math

import torch

from rlft.diffusion.flow import step_sigmas

ODE_SOLVERS = ("euler", "dpm2")


def flow_lambda(sigma: float) -> float:
    """log(alpha / sigma), the half log-SNR of a flow schedule (-inf at sigma = 1, inf at 0)."""
    if sigma >= 1:
        return -math.inf
    if sigma <= 0:
        return math.inf
    return math.log(1 - sigma) - math.log(sigma)


def dpm2_flow_step(x: torch.Tensor, x0: torch.Tensor, sigma: float, sigma_next: float,
                   previous: tuple[torch.Tensor, float] | None = None) -> torch.Tensor:
    """x at `sigma` -> x at `sigma_next`, from the data prediction `x0` (= x - sigma v) and
    `previous` (the data prediction at the previous step's sigma, or None).

    First order (the first step, and the last one, into sigma_next = 0): the DDIM update
    (sigma_next / sigma) (x - alpha x0) + alpha_next x0, DPM-Solver-1 in closed form. Second
    order otherwise: DPM-Solver++(2M)'s midpoint correction -1/2 alpha_next (e^-h - 1) D1 with
    D1 = (x0 - x0_prev) / r, r = h_prev / h, h the step in log-SNR. (From a previous sigma of 1,
    lambda_prev = -inf: r = inf, D1 = 0, a first-order step, as in the public solvers.)
    Coefficients in float64, the latents' arithmetic in float32."""
    x, x0 = x.float(), x0.float()
    alpha, alpha_next = 1 - sigma, 1 - sigma_next
    out = (sigma_next / sigma) * (x - alpha * x0) + alpha_next * x0
    if previous is None or sigma_next <= 0:
        return out
    x0_prev, sigma_prev = previous
    lam_prev, lam, lam_next = flow_lambda(sigma_prev), flow_lambda(sigma), flow_lambda(sigma_next)
    if math.isinf(lam_prev):
        return out
    h, h_prev = lam_next - lam, lam - lam_prev
    d1 = (h / h_prev) * (x0 - x0_prev.float())
    return out - 0.5 * alpha_next * math.expm1(-h) * d1


class EulerSolver:
    """The sampler's own first-order deterministic step; no memory."""

    def __init__(self, sampler):
        self.sampler = sampler

    def observe(self, prediction, timestep, sample) -> None:
        pass

    def step(self, prediction, timestep, sample) -> torch.Tensor:
        return self.sampler.ode_step(prediction, timestep, sample)


class DPMSolver2:
    """DPM-Solver++(2M) on a flow model's scheduler; remembers the last data prediction."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.previous: tuple[torch.Tensor, float] | None = None

    def sigmas(self, timestep, sample) -> tuple[float, float]:
        t = torch.as_tensor(timestep).reshape(-1)[:1]  # the host's timestep (the policy passes it): no device sync
        sigma, sigma_next = step_sigmas(self.scheduler, t)
        return float(sigma), float(sigma_next)

    def observe(self, prediction, timestep, sample) -> None:
        sigma, _ = self.sigmas(timestep, sample)
        self.previous = (sample.float() - sigma * prediction.float(), sigma)

    def step(self, prediction, timestep, sample) -> torch.Tensor:
        sigma, sigma_next = self.sigmas(timestep, sample)
        x0 = sample.float() - sigma * prediction.float()
        out = dpm2_flow_step(sample, x0, sigma, sigma_next, self.previous)
        self.previous = (x0, sigma)
        return out
