"""SEIKO-UCB's reward model: the bonus against an independent computation (the public code's
per-image loop), Sigma's two definitions, its gradient, its settings, and SEIKO on it."""

import math

import pytest
import torch

from rlft.ensemble.ucb import UCBReward
from rlft.tools.tensorboard import read_scalars
from rlft.run.train import build
from tests.test_config import compose_cfg
from tests.test_seiko import TINY_SEIKO


class Identity(torch.nn.Module):
    def features(self, x):
        return x


def fitted(features: torch.Tensor, **settings) -> UCBReward:
    torch.manual_seed(0)
    model = UCBReward(Identity(), feature_dim=features.shape[1], hidden_dim=5, **settings)
    model.observe_feedback(features)
    return model


def loop_bonus(model: UCBReward, feedback: torch.Tensor, x: torch.Tensor, cov: bool) -> torch.Tensor:
    """As the public SEIKO code computes it: image by image, inverting Sigma + lambda I."""
    with torch.no_grad():
        hidden = model.heads[0][1](model.heads[0][0](feedback))  # Linear, then SiLU
        sigma = torch.cov(hidden.T) if cov else sum(torch.outer(h, h) for h in hidden)
        inverse = torch.linalg.inv(sigma + model.lam * torch.eye(len(sigma)))
        out = []
        for row in x:
            phi = model.heads[0][1](model.heads[0][0](row[None])).T  # (H, 1)
            out.append(min(model.alpha * math.sqrt(float(phi.T @ inverse @ phi)), model.clip))
    return torch.tensor(out)


@pytest.mark.parametrize("sigma", ["sum", "cov"])
def test_bonus_is_alpha_sqrt_phi_sigma_inverse_phi_clipped(sigma):
    g = torch.Generator().manual_seed(1)
    feedback, x = torch.randn(40, 3, generator=g), torch.randn(6, 3, generator=g) * 3
    model = fitted(feedback, alpha=0.5, lam=1e-3, clip=10.0, sigma=sigma)
    torch.testing.assert_close(model.bonus(x), loop_bonus(model, feedback, x, sigma == "cov"), rtol=1e-4, atol=1e-6)
    capped = fitted(feedback, alpha=50.0, lam=1e-3, clip=0.7, sigma=sigma)
    assert torch.equal(capped.bonus(x), torch.full((6,), 0.7))  # alpha large enough that every bonus is capped
    # the objective is the MLP's prediction plus the bonus
    torch.testing.assert_close(model.objective_heads(x), model.standardised_heads(x) + model.bonus(x)[:, None])


def test_the_paper_s_sigma_shrinks_the_bonus_with_more_feedback_the_covariance_does_not():
    g = torch.Generator().manual_seed(2)
    data, x = torch.randn(4000, 3, generator=g), torch.randn(20, 3, generator=g)
    few, many = data[:100], data
    ratio = lambda sigma: float((fitted(many, sigma=sigma).bonus(x) / fitted(few, sigma=sigma).bonus(x)).mean())
    assert ratio("sum") == pytest.approx(math.sqrt(100 / 4000), rel=0.2)  # 1 / sqrt(N)
    assert ratio("cov") == pytest.approx(1.0, rel=0.2)


def test_bonus_is_differentiable_in_the_features_and_zero_before_any_feedback():
    torch.manual_seed(0)
    model = UCBReward(Identity(), feature_dim=3, hidden_dim=5)
    x = torch.randn(4, 3, requires_grad=True)
    assert torch.equal(model.bonus(x), torch.zeros(4))
    model.objective_heads(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    model.observe_feedback(torch.randn(30, 3))
    x.grad = None
    model.bonus(x).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("override,match", [("ensemble.alpha=-1", "ensemble.alpha=-1"), ("ensemble.lam=0", "ensemble.lam=0"),
                                            ("ensemble.clip=0", "ensemble.clip=0"), ("ensemble.sigma=diag", "'sum', 'cov'")])
def test_invalid_ucb_settings_fail_at_composition(override, match):
    from rlft.run.validation import validate

    with pytest.raises(ValueError, match=match):
        validate(compose_cfg(["algorithm=seiko", "ensemble=ucb", override]))


def test_seiko_ucb_runs_end_to_end_and_checkpoints_its_precision(tmp_path, tiny_model_dir):
    cfg = compose_cfg([*TINY_SEIKO, "ensemble=ucb", f"model.pretrained={tiny_model_dir}",
                       "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                       "~model.reward_features.pretrained_model_name_or_path"], output_dir=str(tmp_path))
    module, data, trainer = build(cfg)
    trainer.fit(module, datamodule=data)
    assert isinstance(module.ensemble, UCBReward) and len(module.ensemble.heads) == 1
    assert module.oracle_queries == 24
    scalars = read_scalars(tmp_path)
    bonus = [v for _, v in scalars["ensemble/disagreement"]]  # SEIKO-UCB: the mean bonus (reward units)
    assert all(math.isfinite(v) and v > 0 for v in bonus), bonus
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(saved["ensemble.precision"], module.ensemble.precision)
    assert not any(k.startswith("ensemble.backbone") for k in saved)
