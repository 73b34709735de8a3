import math

import pytest
import torch

from rlft.algorithms.ppo_loss import ppo_clip_loss


def reference_loss(log_prob, old, adv, eps):
    ratio = torch.exp(log_prob - old)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - eps, 1 + eps)).mean()


def test_unchanged_policy_has_ratio_one():
    lp = torch.randn(8)
    adv = torch.randn(8)
    loss, stats = ppo_clip_loss(lp.clone(), lp, adv, clip_range=1e-4)
    torch.testing.assert_close(loss, -adv.mean())
    assert stats.approx_kl == 0 and stats.clipfrac == 0 and stats.log_ratio_capped_frac == 0
    torch.testing.assert_close(stats.ratio_mean, torch.tensor(1.0))


def test_matches_reference_formula_and_gradient():
    torch.manual_seed(0)
    old = torch.randn(64)
    new = (old + 0.3 * torch.randn(64)).requires_grad_()
    adv = torch.randn(64)
    loss, stats = ppo_clip_loss(new, old, adv, clip_range=0.2)
    (grad,) = torch.autograd.grad(loss, new)
    new_ref = new.detach().clone().requires_grad_()
    ref = reference_loss(new_ref, old, adv, 0.2)
    (grad_ref,) = torch.autograd.grad(ref, new_ref)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, grad_ref)
    r = torch.exp(new.detach() - old)
    torch.testing.assert_close(stats.clipfrac, ((r - 1).abs() > 0.2).float().mean())
    torch.testing.assert_close(stats.approx_kl, 0.5 * ((new.detach() - old) ** 2).mean())


@pytest.mark.parametrize("adv_sign,log_ratio", [(1.0, 0.5), (-1.0, -0.5)])
def test_clipped_side_has_no_gradient(adv_sign, log_ratio):
    """A > 0 with r > 1 + eps, or A < 0 with r < 1 - eps: the clip is active, gradient 0."""
    new = torch.tensor([log_ratio], requires_grad=True)
    loss, stats = ppo_clip_loss(new, torch.zeros(1), torch.tensor([adv_sign]), clip_range=0.1)
    loss.backward()
    assert new.grad.item() == 0.0
    assert stats.clipfrac.item() == 1.0


def test_huge_log_ratio_stays_finite_and_is_counted():
    """reduction=sum: a per-element ratio of 1.01 over 16384 elements is exp(163): capped."""
    log_ratio = 16384 * math.log(1.01)
    new = torch.tensor([log_ratio, 0.0], requires_grad=True)
    loss, stats = ppo_clip_loss(new, torch.zeros(2), torch.tensor([-1.0, 1.0]), clip_range=1e-4, max_log_ratio=20.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(new.grad).all()
    assert new.grad[0] > 0  # A < 0 and r far above 1: the gradient still pushes log r down
    assert stats.log_ratio_capped_frac.item() == 0.5
    torch.testing.assert_close(stats.log_ratio_absmax, torch.tensor(log_ratio))
    assert stats.clipfrac.item() == 0.5
