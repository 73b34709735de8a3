"""Advantage Weighted Matching as its public code runs it (scxue/advantage_weighted_matching
`scripts/train_sd3_awm.py`): the weighted matching log-probability, the training times, and the
whole loss against the public formulas written out here; the CLI run on the tiny flow model."""

import pytest
import torch

from rlft.algorithms.awm import awm_log_prob, training_indices
from rlft.algorithms.ppo_loss import ppo_clip_loss
from tests.test_end_to_end import FAMILY_RUN, finite_and_documented, run_rlft


def public_log_prob(noise_pred, random_noise, clean_latents, timestep, weighting, ghuber_power=0.25):
    """compute_log_prob_awm's matching part, written out."""
    model_output = noise_pred.double()
    log_prob = -(model_output - (random_noise.double() - clean_latents.double())) ** 2
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))
    t = timestep.view(-1)
    if weighting == "t":
        return log_prob * t
    if weighting == "t**2":
        return log_prob * t**2
    if weighting == "uniform":
        return log_prob
    if weighting == "huber":
        return -(torch.sqrt(-log_prob + 1e-10) - 1e-5) * t
    tiny = torch.tensor(1e-10, dtype=log_prob.dtype)
    return -(torch.pow(-log_prob + 1e-10, ghuber_power) - torch.pow(tiny, ghuber_power)) * t / ghuber_power


@pytest.mark.parametrize("weighting", ["uniform", "t", "t**2", "huber", "ghuber"])
def test_the_matching_log_prob_is_the_public_one(weighting):
    g = torch.Generator().manual_seed(0)
    v, noise, x0 = (torch.randn(5, 2, 4, 4, generator=g) for _ in range(3))
    t = torch.rand(5, generator=g).double()
    got = awm_log_prob(v, noise, x0, t, weighting, 0.25)
    torch.testing.assert_close(got, public_log_prob(v, noise, x0, t, weighting), rtol=1e-12, atol=1e-12)


def public_indices(num_steps, train_timesteps, fraction, time_type):
    """The public 'discrete' and 'discrete_wo_init' time choice, written out."""
    first = 0 if time_type == "discrete" else 1
    boundaries = torch.linspace(first, int(num_steps * fraction), steps=train_timesteps + 1)
    lower_bounds, upper_bounds = boundaries[:-1].long(), boundaries[1:].long()
    rand_u = torch.rand(train_timesteps)
    return lower_bounds + (rand_u * (upper_bounds - lower_bounds)).long()


@pytest.mark.parametrize("time_type", ["discrete", "discrete_wo_init"])
def test_the_training_times_are_the_public_stratified_draw(time_type):
    for seed in range(20):
        torch.manual_seed(seed)
        got = training_indices(14, 6, 0.9, time_type)
        torch.manual_seed(seed)
        assert torch.equal(got, public_indices(14, 6, 0.9, time_type))
        assert got.min() >= (time_type == "discrete_wo_init") and got.max() < 12


def test_the_whole_loss_is_the_public_exp_first_loss_with_both_kl_terms():
    """policy_loss = mean(max(-A r, -A clip(r, 0, 2))), A = clip(adv, 5) / 5 * advantage_max, plus
    beta * mean|v - v_ref|^2 + ema_beta * mean|v - v_ema|^2 (the 'Uniform' KL weights)."""
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([0.9, 0.6, 0.4, 0.2], dtype=torch.float64)
    v_old = torch.randn(4, 2, 4, 4, generator=g)
    v = (v_old + 0.05 * torch.randn(4, 2, 4, 4, generator=g)).requires_grad_()
    v_ref, v_ema = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    adv = torch.tensor([-8.0, -0.5, 1.0, 6.0])
    beta, ema_beta = 0.003, 1.0

    # rlft: AWM.loss's terms
    a = adv.clamp(-5, 5) / 5 * 1.0
    log_prob = awm_log_prob(v, noise, x0, t)
    old = awm_log_prob(v_old, noise, x0, t)
    loss, _ = ppo_clip_loss(log_prob, old, a.double(), 1.0)
    loss = loss + beta * ((v - v_ref) ** 2).mean(dim=(1, 2, 3)).mean() + ema_beta * ((v - v_ema) ** 2).mean(dim=(1, 2, 3)).mean()

    # public, written out
    w = v.detach().clone().requires_grad_()
    advantages = torch.clamp(adv, -5, 5) / 5 * 1
    ratio = torch.exp(public_log_prob(w, noise, x0, t, "ghuber") - public_log_prob(v_old, noise, x0, t, "ghuber").detach())
    policy_loss = torch.mean(torch.maximum(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - 1, 1.0 + 1)))
    kl_loss = ((w - v_ref) ** 2).mean(dim=(1, 2, 3), keepdim=True).mean()
    ema_kl_loss = ((w - v_ema) ** 2).mean(dim=(1, 2, 3), keepdim=True).mean()
    public = policy_loss + beta * kl_loss + ema_beta * ema_kl_loss
    torch.testing.assert_close(loss, public, rtol=1e-10, atol=1e-12)
    loss.backward()
    public.backward()
    torch.testing.assert_close(v.grad, w.grad, rtol=1e-6, atol=1e-9)


def test_awm_through_the_cli(tiny_flow_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=awm", *FAMILY_RUN,
             "algorithm.group_size=4", "algorithm.train_timesteps=2", "algorithm.timestep_fraction=1.0",
             f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    # The old log-probabilities are computed with the weights of the first update: ratio 1 there.
    assert [v for _, v in scalars["train/approx_kl_first_update"]] == [0.0, 0.0]
    assert [round(v, 6) for _, v in scalars["train/ema_kl_decay"]] == [0.002, 0.004]
