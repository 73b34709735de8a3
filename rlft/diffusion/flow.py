"""The flow-matching step as a Gaussian with a log-probability (Flow-GRPO, Liu et al. 2025,
arXiv 2505.05470, eq. 9), for rectified-flow models (SD3/3.5, FLUX, model=digits_flow).

A rectified-flow model predicts a velocity v and samples with the Euler ODE
x_next = x + v * dt, which has no log-probability. Flow-GRPO turns each step into an SDE step
with the same marginals. With the scheduler's sigma (1 = noise, 0 = data), dt = sigma_next -
sigma (< 0) and the noise level a:

    s    = a * sqrt(sigma / (1 - sigma))     (at sigma = 1 the schedule's second sigma stands
                                              in the denominator, as in the public code)
    mean = x * (1 + s^2 / (2 sigma) * dt) + v * (1 + s^2 (1 - sigma) / (2 sigma)) * dt
    std  = s * sqrt(-dt)

As `a -> 0` the mean is the Euler step of diffusers' `FlowMatchEulerDiscreteScheduler.step`.

`sde_type=cps`: Flow-CPS, coefficients-preserving sampling (Wang & Yu 2025, flow_grpo's
`sde_type="cps"`). From the data and noise predictions x0 = x - sigma v, x1 = x + (1 - sigma) v,

    std  = sigma_next * sin(a pi / 2)
    mean = (1 - sigma_next) x0 + sqrt(sigma_next^2 - std^2) x1

so that x_next = mean + std z keeps the schedule's coefficients: data weight 1 - sigma_next, noise
of total std sigma_next. The step into sigma_next = 0 has no noise (std = 0): it is deterministic,
run as an ODE step, never trained on. flow_grpo's CPS log-probability drops every constant
(-|x_next - mean|^2); here it is the exact Gaussian log-density, like the SDE step's.
Math in float32 whatever the model's dtype.
"""

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlft.diffusion.gaussian import per_sample, stochastic_step


def step_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma and sigma_next (B,) of each row's step. `timesteps` are values of
    `scheduler.timesteps` (1000 sigma, floats): each is matched to its nearest step, so a
    stored timestep finds its step again whatever its dtype went through."""
    schedule = scheduler.timesteps.to(timesteps.device, torch.float32)
    index = (timesteps.float().reshape(-1, 1) - schedule).abs().argmin(dim=1)
    sigmas = scheduler.sigmas.to(timesteps.device, torch.float32)
    return sigmas[index], sigmas[index + 1]


def sample_sigmas(scheduler: FlowMatchEulerDiscreteScheduler, timestep: float | torch.Tensor,
                  sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sigma and sigma_next of each row of `sample`, shaped to broadcast over it (B, 1, ...):
    `timestep` one value for the batch or (B,) values."""
    t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
    sigma, sigma_next = step_sigmas(scheduler, t)
    return per_sample(sigma, sample), per_sample(sigma_next, sample)


def flow_sde_mean_and_std(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDE step's Gaussian: mean (B, C, H, W) and std (B, 1, 1, 1), float32."""
    if scheduler.timesteps is None or scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    model_output, sample = model_output.float(), sample.float()
    sigma, sigma_next = sample_sigmas(scheduler, timestep, sample)
    dt = sigma_next - sigma
    # sigma = 1 would divide by zero: the public code puts the schedule's second sigma there.
    sigma_max = scheduler.sigmas[1].to(sample.device, torch.float32)
    s = noise_level * torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma)))
    mean = sample * (1 + s**2 / (2 * sigma) * dt) + model_output * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, s * torch.sqrt(-dt)


def refuse_ode_step(noise_level: float, std: torch.Tensor) -> None:
    if noise_level <= 0:
        raise ValueError(
            f"noise_level={noise_level}: the flow step is then the deterministic Euler (ODE) step, "
            "with no log-probability; RL fine-tuning needs noise_level > 0 (Flow-GRPO's default is 0.7)"
        )


flow_sde_step_with_logprob = stochastic_step(flow_sde_mean_and_std, refuse_ode_step, """One SDE step x_sigma ->
x_sigma_next with its log-probability (Flow-GRPO's): `flow_sde_step_with_logprob(scheduler, model_output,
timestep, sample, noise_level, prev_sample=None, generator=None, reduction="mean")`; `timestep`: values of
`scheduler.timesteps` (`rlft.diffusion.gaussian.stochastic_step`).""")


def flow_cps_mean_and_std(
    scheduler: FlowMatchEulerDiscreteScheduler,
    model_output: torch.Tensor,
    timestep: float | torch.Tensor,
    sample: torch.Tensor,
    noise_level: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow-CPS's Gaussian: mean (B, ...) and std (B, 1, ...), float32."""
    model_output, sample = model_output.float(), sample.float()
    sigma, sigma_next = sample_sigmas(scheduler, timestep, sample)
    std = sigma_next * math.sin(noise_level * math.pi / 2)
    x0 = sample - sigma * model_output
    x1 = sample + (1 - sigma) * model_output
    return x0 * (1 - sigma_next) + x1 * torch.sqrt(sigma_next**2 - std**2), std


def refuse_noiseless_cps(noise_level: float, std: torch.Tensor) -> None:
    if not bool((std > 0).all()):
        raise ValueError("the CPS step into sigma = 0 has no noise and no log-probability: it is a deterministic step")


flow_cps_step_with_logprob = stochastic_step(flow_cps_mean_and_std, refuse_noiseless_cps, """One Flow-CPS step
with its exact log-probability, called as `flow_sde_step_with_logprob`.""")


def flow_ode_step(
    scheduler: FlowMatchEulerDiscreteScheduler, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """The Euler step x + v * dt: no noise, no log-probability (steps outside the SDE window)."""
    sigma, sigma_next = sample_sigmas(scheduler, timestep, sample)
    return sample.float() + model_output.float() * (sigma_next - sigma)
