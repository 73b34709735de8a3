"""The flow SDE step (Flow-GRPO eq. 9) against an independent float64 computation, diffusers'
Euler step, torch.distributions, and itself (a stored transition recomputed)."""

import math

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlft.diffusion.flow import flow_cps_step_with_logprob, flow_ode_step, flow_sde_step_with_logprob
from rlft.diffusion.gaussian import gaussian_kl_equal_std


def make_scheduler(num_steps=10, shift=1.0):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler


def reference_step(sigmas: np.ndarray, i: int, x: np.ndarray, v: np.ndarray, a: float, nxt: np.ndarray):
    """Flow-GRPO's SDE step written out in float64 from DESIGN.md, per element log-density."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    dt = sigma_next - sigma
    denominator = 1 - (float(sigmas[1]) if sigma == 1 else sigma)
    s = a * math.sqrt(sigma / denominator)
    mean = x * (1 + s**2 / (2 * sigma) * dt) + v * (1 + s**2 * (1 - sigma) / (2 * sigma)) * dt
    std = s * math.sqrt(-dt)
    log_density = -((nxt - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return mean, std, log_density


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_float64_reference_at_every_step(shift, reduction):
    torch.manual_seed(0)
    scheduler = make_scheduler(shift=shift)
    sigmas = scheduler.sigmas.double().numpy()
    assert sigmas[0] == 1.0  # the first step takes the sigma = 1 branch
    x = torch.randn(3, 4, 8, 8)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(3, 4, 8, 8)
        step = flow_sde_step_with_logprob(scheduler, v, t, x, 0.7, reduction=reduction)
        mean, std, log_density = reference_step(sigmas, i, x.double().numpy(), v.double().numpy(), 0.7,
                                                step.prev_sample.double().numpy())
        np.testing.assert_allclose(step.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(step.std.flatten().numpy(), std, rtol=1e-5)
        reduced = log_density.reshape(3, -1).mean(1) if reduction == "mean" else log_density.reshape(3, -1).sum(1)
        np.testing.assert_allclose(step.log_prob.numpy(), reduced, rtol=1e-4, atol=1e-3 if reduction == "sum" else 1e-5)
        x = step.prev_sample


def test_small_noise_level_gives_diffusers_euler_step():
    """noise_level -> 0: the SDE step's mean is FlowMatchEulerDiscreteScheduler.step, and the
    ODE step equals it exactly."""
    torch.manual_seed(1)
    scheduler = make_scheduler(shift=3.0)
    reference = make_scheduler(shift=3.0)
    x = torch.randn(2, 4, 8, 8)
    for t in scheduler.timesteps:
        v = torch.randn(2, 4, 8, 8)
        euler = reference.step(v, t, x).prev_sample
        sde = flow_sde_step_with_logprob(scheduler, v, t, x, 1e-6)
        torch.testing.assert_close(sde.mean, euler, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(flow_ode_step(scheduler, v, t, x), euler, rtol=0, atol=1e-6)
        assert (sde.std < 1e-5).all()
        x = euler


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_stored_transition_recomputes_exactly_also_with_per_row_timesteps(reduction):
    """Training recomputes each stored transition with per-row timesteps in shuffled order:
    with unchanged weights the log-probability is the stored one, bit for bit."""
    torch.manual_seed(2)
    scheduler = make_scheduler()
    x, stored, timesteps, outputs = torch.randn(4, 1, 8, 8), [], [], []
    for t in scheduler.timesteps[[7, 0, 3, 9]]:  # one row per step, the first (sigma = 1) and last among them
        v = torch.randn(1, 1, 8, 8)
        row = x[len(stored) : len(stored) + 1]
        stored.append(flow_sde_step_with_logprob(scheduler, v, t, row, 0.7, reduction=reduction))
        timesteps.append(t)
        outputs.append(v)
    batched = flow_sde_step_with_logprob(
        scheduler, torch.cat(outputs), torch.stack(timesteps), x, 0.7,
        prev_sample=torch.cat([s.prev_sample for s in stored]), reduction=reduction,
    )
    assert torch.equal(batched.log_prob, torch.cat([s.log_prob for s in stored]))


def test_log_prob_matches_torch_normal_and_sum_is_n_times_mean():
    torch.manual_seed(3)
    scheduler = make_scheduler()
    x, v, nxt = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[4]
    step = flow_sde_step_with_logprob(scheduler, v, t, x, 0.7, prev_sample=nxt, reduction="sum")
    mean_reduced = flow_sde_step_with_logprob(scheduler, v, t, x, 0.7, prev_sample=nxt, reduction="mean").log_prob
    expected = torch.distributions.Normal(step.mean, step.std).log_prob(nxt).flatten(1).sum(1)
    torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(step.log_prob, 4 * 8 * 8 * mean_reduced)


def test_kl_between_two_flow_gaussians_matches_torch():
    torch.manual_seed(4)
    scheduler = make_scheduler()
    x = torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[2]
    policy = flow_sde_step_with_logprob(scheduler, torch.randn(2, 4, 8, 8), t, x, 0.7)
    reference = flow_sde_step_with_logprob(scheduler, torch.randn(2, 4, 8, 8), t, x, 0.7)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(policy.mean, policy.std.expand_as(policy.mean)),
        torch.distributions.Normal(reference.mean, reference.std.expand_as(reference.mean)),
    )
    torch.testing.assert_close(gaussian_kl_equal_std(policy.mean, reference.mean, policy.std, "sum"),
                               expected.flatten(1).sum(1), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(gaussian_kl_equal_std(policy.mean, reference.mean, policy.std, "mean"),
                               expected.flatten(1).mean(1), rtol=1e-5, atol=1e-6)


def test_gradient_reaches_the_velocity_not_the_stored_sample():
    scheduler = make_scheduler()
    v = torch.randn(2, 1, 4, 4, requires_grad=True)
    nxt = torch.randn(2, 1, 4, 4, requires_grad=True)
    flow_sde_step_with_logprob(scheduler, v, scheduler.timesteps[3], torch.randn(2, 1, 4, 4), 0.7, prev_sample=nxt).log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0 and nxt.grad is None


@pytest.mark.parametrize("noise_level", [0.0, -0.5])
def test_non_positive_noise_level_is_a_clear_error(noise_level):
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="noise_level.*deterministic"):
        flow_sde_step_with_logprob(scheduler, torch.zeros(1, 1, 4, 4), scheduler.timesteps[0], torch.zeros(1, 1, 4, 4), noise_level)


def test_bfloat16_inputs_give_float32_math():
    scheduler = make_scheduler()
    step = flow_sde_step_with_logprob(scheduler, torch.randn(2, 1, 4, 4, dtype=torch.bfloat16), scheduler.timesteps[1],
                                      torch.randn(2, 1, 4, 4, dtype=torch.bfloat16), 0.7)
    assert step.mean.dtype == step.log_prob.dtype == torch.float32


def reference_cps_step(sigmas: np.ndarray, i: int, x: np.ndarray, v: np.ndarray, a: float, nxt: np.ndarray):
    """Flow-CPS written out in float64 from its definition (flow_grpo's sde_type="cps"), with the
    Gaussian's full log-density (flow_grpo drops its constants)."""
    sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
    std = sigma_next * math.sin(a * math.pi / 2)
    x0, x1 = x - sigma * v, x + (1 - sigma) * v
    mean = (1 - sigma_next) * x0 + math.sqrt(sigma_next**2 - std**2) * x1
    log_density = -((nxt - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)
    return mean, std, log_density


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_cps_matches_float64_reference_and_recomputes_exactly(shift):
    torch.manual_seed(3)
    scheduler = make_scheduler(shift=shift)
    sigmas = scheduler.sigmas.double().numpy()
    x = torch.randn(3, 4, 8, 8)
    for i, t in enumerate(scheduler.timesteps[:-1]):  # the last step, into sigma 0, has no noise
        v = torch.randn(3, 4, 8, 8)
        step = flow_cps_step_with_logprob(scheduler, v, t, x, 0.8)
        mean, std, log_density = reference_cps_step(sigmas, i, x.double().numpy(), v.double().numpy(), 0.8,
                                                    step.prev_sample.double().numpy())
        np.testing.assert_allclose(step.mean.numpy(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(step.std.flatten().numpy(), std, rtol=1e-6)
        np.testing.assert_allclose(step.log_prob.numpy(), log_density.reshape(3, -1).mean(1), rtol=1e-5, atol=1e-5)
        again = flow_cps_step_with_logprob(scheduler, v, t.expand(3), x, 0.8, prev_sample=step.prev_sample)
        assert torch.equal(again.log_prob, step.log_prob)  # a stored step recomputed, bit for bit
        x = step.prev_sample
    with pytest.raises(ValueError, match="no noise and no log-probability"):
        flow_cps_step_with_logprob(scheduler, v, scheduler.timesteps[-1], x, 0.8)


def test_cps_preserves_the_schedules_coefficients():
    """With the exact velocity (v = eps - x_0 at x = (1 - sigma) x_0 + sigma eps) the next sample is
    (1 - sigma_next) x_0 + noise of total std sigma_next: the data coefficient and the noise level
    of the schedule, which the Flow-GRPO SDE step only approximates."""
    scheduler = make_scheduler(num_steps=10, shift=3.0)
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(4000, 1, 1, 1, generator=g), torch.randn(4000, 1, 1, 1, generator=g)
    i = 4
    sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
    x = (1 - sigma) * x0 + sigma * eps
    step = flow_cps_step_with_logprob(scheduler, eps - x0, scheduler.timesteps[i], x, 0.8, generator=g)
    residual = step.prev_sample - (1 - sigma_next) * x0  # what is left is noise
    assert abs(float(residual.std()) - sigma_next) < 0.03 * sigma_next
    assert abs(float((residual * x0).mean())) < 0.03  # independent of the data
