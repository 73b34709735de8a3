"""The DDIM step with the log-probability of the transition (the policy of DDPO/SEIKO).

Follows diffusers' `DDIMScheduler.step` for the mean (so the two agree on the same noise)
and adds the Gaussian log-density of the sampled `prev_sample`. All math is float32
whatever the UNet's dtype: a log-ratio of two half-precision log-probs is mostly noise.
"""

import torch
from diffusers import DDIMScheduler

from rlft.diffusion.gaussian import per_sample, stochastic_step


def step_alphas(scheduler: DDIMScheduler, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alphas_cumprod at t and at t' = t - T/num_steps (final_alpha_cumprod when t' < 0)."""
    prev_t = timesteps - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device, torch.float32)
    final_alpha = torch.as_tensor(scheduler.final_alpha_cumprod, device=timesteps.device, dtype=torch.float32)
    return alphas_cumprod[timesteps], torch.where(prev_t >= 0, alphas_cumprod[prev_t.clamp(min=0)], final_alpha)


def check_stochastic(scheduler: DDIMScheduler) -> None:
    """Every step of the schedule must have std > 0, or its log-probability is undefined.

    With steps_offset=0 and set_alpha_to_one=False the last step goes from t=0 to
    final_alpha_cumprod = alphas_cumprod[0]: zero variance. Stable Diffusion's scheduler
    avoids it with steps_offset=1.
    """
    alpha_t, alpha_prev = step_alphas(scheduler, scheduler.timesteps.long())
    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    zero = (variance <= 0).nonzero().flatten().tolist()
    if zero:
        bad = [int(scheduler.timesteps[i]) for i in zero]
        raise ValueError(
            f"the DDIM step from timestep(s) {bad} is deterministic (variance 0), so it has no "
            "log-probability; use a scheduler with steps_offset=1 (as Stable Diffusion's) or "
            f"set_alpha_to_one=False (scheduler config: steps_offset={scheduler.config.steps_offset}, "
            f"set_alpha_to_one={scheduler.config.set_alpha_to_one})"
        )


def ddim_mean_and_std(
    scheduler: DDIMScheduler, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM step's Gaussian x_t -> x_t' (t' = t - T/num_steps): mean (B, C, H, W) and std
    (B, 1, 1, 1), float32. eta = 0 is the deterministic DDIM step (std 0): an ODE step."""
    if scheduler.num_inference_steps is None:
        raise ValueError("call scheduler.set_timesteps(num_steps) before stepping")
    if scheduler.config.thresholding:
        raise NotImplementedError("dynamic thresholding is not supported by the log-prob step")

    model_output = model_output.float()
    sample = sample.float()
    t = torch.as_tensor(timestep, device=sample.device, dtype=torch.long).expand(sample.shape[0])
    alpha_t, alpha_prev = (per_sample(a, sample) for a in step_alphas(scheduler, t))

    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        x0 = (sample - (1 - alpha_t).sqrt() * model_output) / alpha_t.sqrt()
        eps = model_output
    elif prediction == "sample":
        x0 = model_output
        eps = (sample - alpha_t.sqrt() * x0) / (1 - alpha_t).sqrt()
    elif prediction == "v_prediction":
        x0 = alpha_t.sqrt() * sample - (1 - alpha_t).sqrt() * model_output
        eps = alpha_t.sqrt() * model_output + (1 - alpha_t).sqrt() * sample
    else:
        raise ValueError(f"prediction_type={prediction!r} is not epsilon, sample or v_prediction")
    if scheduler.config.clip_sample:
        r = scheduler.config.clip_sample_range
        x0 = x0.clamp(-r, r)

    variance = (1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)
    std = eta * variance.sqrt()
    mean = alpha_prev.sqrt() * x0 + (1 - alpha_prev - std**2).sqrt() * eps
    return mean, std


def refuse_deterministic_ddim(eta: float, std: torch.Tensor) -> None:
    if eta <= 0:
        raise ValueError(
            f"eta={eta}: the DDIM step is deterministic (std = 0) and has no log-probability; "
            "RL fine-tuning needs eta > 0 (the public DDPO default is 1.0)"
        )


ddim_step_with_logprob = stochastic_step(ddim_mean_and_std, refuse_deterministic_ddim, """One DDIM step x_t -> x_t'
(t' = t - T/num_steps) with its log-probability: `ddim_step_with_logprob(scheduler, model_output, timestep,
sample, eta, prev_sample=None, generator=None, reduction="mean")` (`rlft.diffusion.gaussian.stochastic_step`).""")
