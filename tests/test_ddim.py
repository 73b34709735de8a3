import math

import pytest
import torch
from diffusers import DDIMScheduler

from rlft.diffusion.ddim import check_stochastic, ddim_step_with_logprob
from rlft.diffusion.gaussian import reduce_over_sample


def make_scheduler(prediction_type="epsilon", clip_sample=False, num_steps=10):
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=clip_sample, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )
    scheduler.set_timesteps(num_steps)
    return scheduler


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_mean_and_std_match_diffusers_step(prediction_type, clip_sample, eta):
    """mean + std * z equals diffusers' DDIMScheduler.step with the same noise z, at every
    timestep including the last one (where t' < 0 uses final_alpha_cumprod)."""
    torch.manual_seed(0)
    scheduler = make_scheduler(prediction_type, clip_sample)
    sample = torch.randn(3, 4, 8, 8)
    for t in scheduler.timesteps:
        model_output, z = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        expected = scheduler.step(model_output, t, sample, eta=eta, variance_noise=z).prev_sample
        ours = ddim_step_with_logprob(scheduler, model_output, t, sample, eta)
        torch.testing.assert_close(ours.mean + ours.std * z, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_log_prob_matches_torch_normal(reduction):
    torch.manual_seed(1)
    scheduler = make_scheduler()
    sample, model_output = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = scheduler.timesteps[3]
    step = ddim_step_with_logprob(scheduler, model_output, t, sample, 1.0, reduction=reduction)
    # Independent computation of the same Gaussian from the DESIGN formulas.
    a_t = scheduler.alphas_cumprod[t]
    a_prev = scheduler.alphas_cumprod[t - 1000 // 10]  # t = 601 here, so t' >= 0
    x0 = (sample - (1 - a_t).sqrt() * model_output) / a_t.sqrt()
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * model_output
    elementwise = torch.distributions.Normal(mean, std).log_prob(step.prev_sample)
    expected = elementwise.flatten(1).mean(1) if reduction == "mean" else elementwise.flatten(1).sum(1)
    torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=1e-4)


def test_sum_is_n_times_mean():
    torch.manual_seed(2)
    scheduler = make_scheduler()
    sample, out, nxt = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = scheduler.timesteps[0]
    lp_mean = ddim_step_with_logprob(scheduler, out, t, sample, 1.0, prev_sample=nxt, reduction="mean").log_prob
    lp_sum = ddim_step_with_logprob(scheduler, out, t, sample, 1.0, prev_sample=nxt, reduction="sum").log_prob
    torch.testing.assert_close(lp_sum, 4 * 8 * 8 * lp_mean)


def test_per_sample_timesteps_equal_separate_calls():
    torch.manual_seed(3)
    scheduler = make_scheduler()
    sample, out, nxt = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    ts = scheduler.timesteps[[0, 4, 9]]  # the last one steps to t' < 0
    batched = ddim_step_with_logprob(scheduler, out, ts, sample, 1.0, prev_sample=nxt).log_prob
    for i, t in enumerate(ts):
        single = ddim_step_with_logprob(scheduler, out[i : i + 1], int(t), sample[i : i + 1], 1.0, prev_sample=nxt[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], single.log_prob)


def test_stored_sample_is_a_constant():
    scheduler = make_scheduler()
    out = torch.randn(2, 4, 8, 8, requires_grad=True)
    nxt = torch.randn(2, 4, 8, 8, requires_grad=True)
    step = ddim_step_with_logprob(scheduler, out, scheduler.timesteps[2], torch.randn(2, 4, 8, 8), 1.0, prev_sample=nxt)
    step.log_prob.sum().backward()
    assert nxt.grad is None
    assert out.grad is not None and torch.isfinite(out.grad).all()


def test_eta_zero_is_a_clear_error():
    scheduler = make_scheduler()
    with pytest.raises(ValueError, match="eta=0"):
        ddim_step_with_logprob(scheduler, torch.zeros(1, 4, 8, 8), scheduler.timesteps[0], torch.zeros(1, 4, 8, 8), 0.0)


def test_unknown_reduction_names_the_valid_ones():
    with pytest.raises(ValueError, match="mean.*sum"):
        reduce_over_sample(torch.zeros(2, 3), "avg")


def test_sampled_log_prob_is_finite_and_gaussian_at_the_sample():
    """Sampling: log-prob of x' = mean + std z equals -z^2/2 - log std - log sqrt(2 pi)."""
    scheduler = make_scheduler()
    gen = torch.Generator().manual_seed(0)
    step = ddim_step_with_logprob(scheduler, torch.randn(2, 4, 8, 8), scheduler.timesteps[5], torch.randn(2, 4, 8, 8), 1.0, generator=gen)
    z = (step.prev_sample - step.mean) / step.std
    expected = (-(z**2) / 2 - torch.log(step.std) - math.log(math.sqrt(2 * math.pi))).flatten(1).mean(1)
    torch.testing.assert_close(step.log_prob, expected)


def test_schedule_with_a_deterministic_step_is_refused():
    scheduler = DDIMScheduler(num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=0)
    scheduler.set_timesteps(10)  # last step: t = 0 -> alphas_cumprod[0], variance 0
    with pytest.raises(ValueError, match=r"timestep\(s\) \[0\].*steps_offset=1"):
        check_stochastic(scheduler)
    check_stochastic(make_scheduler())  # steps_offset=1: every step stochastic


def test_sampled_step_is_reparameterised():
    scheduler = make_scheduler()
    out = torch.randn(2, 4, 8, 8, requires_grad=True)
    step = ddim_step_with_logprob(scheduler, out, scheduler.timesteps[2], torch.randn(2, 4, 8, 8), 1.0)
    step.prev_sample.sum().backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_kl_of_equal_std_gaussians_matches_torch():
    from rlft.diffusion.gaussian import gaussian_kl_equal_std

    mean, ref, std = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.full((3, 1, 1, 1), 0.3)
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), torch.distributions.Normal(ref, std))
    torch.testing.assert_close(gaussian_kl_equal_std(mean, ref, std, "sum"), expected.flatten(1).sum(1))
    torch.testing.assert_close(gaussian_kl_equal_std(mean, ref, std, "mean"), expected.flatten(1).mean(1))
