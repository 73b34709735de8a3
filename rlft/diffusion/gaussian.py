"""What the two sampler steps (DDIM, flow SDE) share: a Gaussian transition x_t -> x_t',
its log-density reduced over a sample's elements, and the KL between two such Gaussians.
All float32: a log-ratio of two half-precision log-probs is mostly noise."""

import math
from dataclasses import dataclass

import torch
from diffusers.utils.torch_utils import randn_tensor

REDUCTIONS = ("mean", "sum")
KL_FORMS = ("exact", "without_dt")  # GRPO's algorithm.kl_form (`kl_std`)
_LOG_SQRT_2PI = math.log(math.sqrt(2 * math.pi))


@dataclass
class GaussianStep:
    prev_sample: torch.Tensor  # (B, C, H, W)
    log_prob: torch.Tensor  # (B,) reduced over C, H, W
    mean: torch.Tensor  # (B, C, H, W)
    std: torch.Tensor  # (B, 1, 1, 1)


def reduce_over_sample(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) -> (B,). `mean` is what the public DDPO and Flow-GRPO codes use; `sum` is the
    true log-density of the joint Gaussian (N times the mean, N elements per sample)."""
    dims = tuple(range(1, values.ndim))
    if reduction == "mean":
        return values.mean(dim=dims)
    if reduction == "sum":
        return values.sum(dim=dims)
    raise ValueError(f"reduction={reduction!r} is not one of {REDUCTIONS}")


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against `like`."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def gaussian_step(
    mean: torch.Tensor,
    std: torch.Tensor,
    prev_sample: torch.Tensor | None,
    generator: torch.Generator | list[torch.Generator] | None,
    reduction: str,
) -> GaussianStep:
    """Draw x_t' = mean + std * z (reparameterised: it carries the mean's gradient when sampling
    with grad, as SEIKO does), or take the stored `prev_sample` (training), and its log-density.
    `generator` may be a list, one per sample (diffusers' `randn_tensor` draws each row from its own)."""
    if prev_sample is None:
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        prev_sample = mean + std * noise
    else:
        prev_sample = prev_sample.float()
    # The density is of a fixed point: no gradient through x_t' (DESIGN.md).
    target = prev_sample.detach()
    log_density = -((target - mean) ** 2) / (2 * std**2) - torch.log(std) - _LOG_SQRT_2PI
    return GaussianStep(prev_sample, reduce_over_sample(log_density, reduction), mean, std)


def gaussian_kl_equal_std(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor, reduction: str) -> torch.Tensor:
    """KL between two Gaussians of equal std: (mean - ref_mean)^2 / (2 std^2), reduced over the
    non-batch dimensions like the log-probability. (B, ...) -> (B,)."""
    return reduce_over_sample((mean - ref_mean) ** 2 / (2 * std**2), reduction)


def kl_std(std: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, kl_form: str) -> torch.Tensor:
    """The std the KL term divides by: the step's (`exact`), or flow_grpo's `std_dev_t`, the step's
    std without its sqrt(sigma - sigma_next) (`without_dt`)."""
    if kl_form == "exact":
        return std
    if kl_form == "without_dt":
        return std / per_sample(torch.sqrt(sigma - sigma_next), std)
    raise ValueError(f"algorithm.kl_form={kl_form!r} is not a form: valid are {list(KL_FORMS)}")


def stochastic_step(mean_and_std, refuse, doc: str):
    """A step with log-probability, `step(scheduler, model_output, timestep, sample, noise,
    prev_sample=None, generator=None, reduction="mean") -> GaussianStep`, from the function that
    gives the step's Gaussian, `mean_and_std(scheduler, model_output, timestep, sample, noise)`,
    and `refuse(noise, std)`, which raises where the step has no log-probability (std 0).
    `timestep`: one value for the whole batch (sampling) or a (B,) tensor (training, where each
    trajectory's timesteps are shuffled on their own). `prev_sample` (training): the stored next
    latent, a constant. `generator` may be a list, one per sample (diffusers' `randn_tensor`
    draws each row from its own)."""

    def step(scheduler, model_output: torch.Tensor, timestep, sample: torch.Tensor, noise: float,
             prev_sample: torch.Tensor | None = None,
             generator: torch.Generator | list[torch.Generator] | None = None, reduction: str = "mean") -> GaussianStep:
        mean, std = mean_and_std(scheduler, model_output, timestep, sample, noise)
        refuse(noise, std)
        return gaussian_step(mean, std, prev_sample, generator, reduction)

    step.__doc__ = doc
    return step
