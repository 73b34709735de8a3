"""The algorithm family's losses and advantage/weight functions, each against an independent
computation written out here (loops, numpy, the formulas of DESIGN.md)."""

import math

import numpy as np
import pytest
import torch

from rlft.algorithms.advantages import group_normalized
from rlft.algorithms.grpo import grpo_loss
from rlft.algorithms.nft import nft_loss, optimality_probability
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.algorithms.reinforce import reinforce_loss
from rlft.algorithms.rwr import rwr_weights
from rlft.data.prompts import PromptDataModule


def test_group_advantages_match_a_per_group_numpy_computation():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=24)
    got = group_normalized(torch.tensor(rewards, dtype=torch.float32), torch.ones(24, dtype=torch.bool), group_size=6)
    want = np.concatenate([(g - g.mean()) / (g.std() + 1e-4) for g in rewards.reshape(4, 6)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    centred = group_normalized(torch.tensor(rewards, dtype=torch.float32), torch.ones(24, dtype=torch.bool), 6, std_normalize=False)
    np.testing.assert_allclose(centred.numpy(), np.concatenate([g - g.mean() for g in rewards.reshape(4, 6)]), rtol=1e-5, atol=1e-6)


def test_global_std_divides_each_group_by_the_whole_batch_std_as_flow_grpo():
    """flow_grpo's PerPromptStatTracker(global_std=True): (r - mean_prompt) / (np.std(all rewards) + 1e-4)."""
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=12) * np.repeat([1.0, 5.0, 0.2], 4)
    got = group_normalized(torch.tensor(rewards), torch.ones(12, dtype=torch.bool), 4, global_std=True)
    want = np.concatenate([(g - g.mean()) / (rewards.std() + 1e-4) for g in rewards.reshape(3, 4)])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_group_advantages_leave_non_finite_rewards_out_of_their_group():
    rewards = torch.tensor([1.0, 2.0, float("nan"), 4.0, 5.0, 5.0, 5.0, 5.0])
    valid = torch.isfinite(rewards)
    got = group_normalized(rewards, valid, group_size=4)
    first = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(got[[0, 1, 3]].numpy(), (first - first.mean()) / (first.std() + 1e-4), rtol=1e-5)
    assert got[2] == 0  # no advantage for the NaN sample
    assert torch.all(got[4:] == 0)  # a group of equal rewards teaches nothing
    with pytest.raises(ValueError, match="groups of 3"):
        group_normalized(rewards, valid, group_size=3)


def test_grpo_loss_is_ppo_plus_the_weighted_gaussian_kl():
    torch.manual_seed(0)
    old = torch.randn(4)
    new = (old + 0.01 * torch.randn(4)).requires_grad_()
    adv = torch.randn(4)
    mean = torch.randn(4, 2, 3, 3, requires_grad=True)
    ref_mean = mean.detach() + 0.1 * torch.randn(4, 2, 3, 3)
    std = torch.full((4, 1, 1, 1), 0.3)
    loss, stats = grpo_loss(new, old, adv, mean, ref_mean, std, clip_range=0.2, kl_weight=0.5, reduction="mean")
    ppo, _ = ppo_clip_loss(new, old, adv, 0.2)
    kl = ((mean.detach() - ref_mean) ** 2 / (2 * 0.3**2)).mean(dim=(1, 2, 3)).mean()  # reduction=mean
    torch.testing.assert_close(loss, ppo + 0.5 * kl)
    torch.testing.assert_close(stats["kl"], kl)
    loss.backward()  # the KL's gradient in the mean: kl_weight * (mean - ref) / std^2 / (N elements * B)
    torch.testing.assert_close(mean.grad, 0.5 * (mean.detach() - ref_mean) / 0.3**2 / (18 * 4))
    # kl_weight 0 or no reference: exactly PPO's loss, and no "kl" statistic
    plain, stats = grpo_loss(new, old, adv, mean, None, std, 0.2, 0.0, "mean")
    torch.testing.assert_close(plain, ppo)
    assert "kl" not in stats


def test_reinforce_gradient_is_minus_the_advantage_over_the_batch():
    log_prob = torch.randn(5, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0])
    reinforce_loss(log_prob, adv).backward()
    torch.testing.assert_close(log_prob.grad, -adv / 5)


def test_rwr_weights_exp_and_sparse():
    adv = torch.tensor([0.5, -1.0, 2.0, 0.0])
    w = rwr_weights(adv, "exp", beta=0.5)
    e = [math.exp(a / 0.5) for a in adv.tolist()]
    torch.testing.assert_close(w, torch.tensor([x / (sum(e) / 4) for x in e]))
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    # beta -> infinity: uniform weights (maximum likelihood on every sample)
    torch.testing.assert_close(rwr_weights(adv, "exp", beta=1e9), torch.ones(4))
    assert rwr_weights(adv, "sparse", quantile=0.5).tolist() == [1.0, 0.0, 1.0, 0.0]  # the top 2 of 4
    assert rwr_weights(adv, "sparse", quantile=0.01).tolist() == [0.0, 0.0, 1.0, 0.0]  # at least one
    with pytest.raises(ValueError, match="one of"):
        rwr_weights(adv, "linear")


def test_optimality_probability_maps_the_clipped_advantage_to_the_unit_interval():
    adv = torch.tensor([-10.0, -5.0, 0.0, 2.5, 5.0, 7.0])
    assert optimality_probability(adv, 5.0).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]


def velocity_form(v_theta, v_old, eps, x_0, sigma, r, beta):
    """DESIGN.md's loss in velocity space, unweighted: r |v+ - v*|^2 + (1 - r) |v- - v*|^2 with the
    flow-matching target v* = eps - x_0, times sigma^2 (the x_0-prediction error's scale), / beta."""
    target = eps - x_0
    v_pos = (1 - beta) * v_old + beta * v_theta
    v_neg = (1 + beta) * v_old - beta * v_theta
    s2 = sigma.view(-1, 1, 1, 1) ** 2
    pos = (s2 * (v_pos - target) ** 2).mean(dim=(1, 2, 3))
    neg = (s2 * (v_neg - target) ** 2).mean(dim=(1, 2, 3))
    return ((r * pos + (1 - r) * neg) / beta).mean()


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_nft_loss_is_the_velocity_space_objective(beta):
    torch.manual_seed(0)
    x_0, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.2, 0.5, 0.9])
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x_0 + sigma.view(-1, 1, 1, 1) * eps
    v_theta, v_old = torch.randn(3, 2, 4, 4, requires_grad=True), torch.randn(3, 2, 4, 4)
    r = torch.tensor([1.0, 0.0, 0.3])
    loss, stats = nft_loss(v_theta, v_old, x_t, x_0, sigma, r, beta, adaptive_weight=False)
    v_ref = v_theta.detach().clone().requires_grad_()
    want = velocity_form(v_ref, v_old, eps, x_0, sigma, r, beta)
    torch.testing.assert_close(loss, want)
    loss.backward()
    want.backward()
    torch.testing.assert_close(v_theta.grad, v_ref.grad)
    assert stats["optimality_mean"] == r.mean()


def test_nft_pulls_a_rewarded_sample_towards_the_target_and_pushes_a_punished_one_away():
    torch.manual_seed(1)
    x_0, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    sigma = torch.tensor([0.6])
    x_t = 0.4 * x_0 + 0.6 * eps
    v_old = torch.randn(1, 1, 4, 4)
    target = eps - x_0
    for r, closer in ((1.0, True), (0.0, False)):
        v = v_old.clone().requires_grad_()
        loss, _ = nft_loss(v, v_old, x_t, x_0, sigma, torch.tensor([r]), beta=1.0)
        loss.backward()
        moved = v.detach() - 0.01 * v.grad
        assert ((moved - target).norm() < (v_old - target).norm()) == closer


def test_nft_adaptive_weight_divides_each_error_by_its_mean_absolute_value():
    torch.manual_seed(2)
    x_0, x_t = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    sigma = torch.tensor([0.3, 0.7])
    v_theta, v_old = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    r = torch.tensor([1.0, 1.0])  # positive term only; beta = 1: v+ = v_theta
    loss, _ = nft_loss(v_theta, v_old, x_t, x_0, sigma, r, beta=1.0, adaptive_weight=True)
    err = x_t - sigma.view(-1, 1, 1, 1) * v_theta - x_0
    want = np.mean([float((e**2).mean() / e.abs().mean()) for e in err])
    assert math.isclose(float(loss), want, rel_tol=1e-5)


def test_grouped_epochs_repeat_each_drawn_prompt_consecutively():
    data = PromptDataModule(train=[str(i) for i in range(10)], samples_per_epoch=12, seed=3, group_size=4)
    (prompts,) = list(data.train_dataloader())
    assert len(prompts) == 12
    groups = [prompts[i : i + 4] for i in range(0, 12, 4)]
    assert all(len(set(g)) == 1 for g in groups) and len({g[0] for g in groups}) == 3
    with pytest.raises(ValueError, match="multiple of group_size=5"):
        PromptDataModule(train=["a"], samples_per_epoch=12, group_size=5)
    # group_size 1 draws exactly what it always did
    plain = PromptDataModule(train=[str(i) for i in range(10)], samples_per_epoch=12, seed=3)
    from torch.utils.data import RandomSampler
    sampler = RandomSampler(range(10), num_samples=12, generator=torch.Generator().manual_seed(3))
    assert list(plain.train_dataloader())[0] == [str(i) for i in sampler]
