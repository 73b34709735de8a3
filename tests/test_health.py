"""Non-finite rewards and gradients: counted, kept out of the update, and fatal only when
they persist. Weights never become NaN."""

import pytest
import torch

from rlft.algorithms.health import NonFiniteError, NonFiniteGuard
from rlft.algorithms.optimizer_step import clipped_step
from rlft.rewards.jpeg import JpegCompressibility
from rlft.tools.tensorboard import read_scalars
from rlft.run.train import build
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg
from tests.test_seiko import TINY_SEIKO

TINY_PPO = [
    "trainer.max_epochs=2", "data.samples_per_epoch=8", "algorithm.sample_batch_size=4",
    "algorithm.train_batch_size=4", "policy.num_steps=3", "algorithm.evaluation.samples_per_prompt=1",
]


class PartlyNaN(JpegCompressibility):
    """JPEG compressibility, NaN for the first `nan_per_call` images of every call."""

    def __init__(self, nan_per_call: int = 1):
        super().__init__()
        self.nan_per_call = nan_per_call

    def __call__(self, images, prompts):
        rewards = super().__call__(images, prompts)
        rewards[: self.nan_per_call] = float("nan")
        return rewards


def fit(tmp_path, overrides):
    model_dir = save_tiny_model(tmp_path / "model")
    cfg = compose_cfg([f"model.pretrained={model_dir}", "reward._target_=tests.test_health.PartlyNaN",
                       "~reward.quality", *overrides], output_dir=str(tmp_path / "run"))
    module, data, trainer = build(cfg)
    before = [p.detach().clone() for p in module.policy.trainable_parameters()]
    trainer.fit(module, datamodule=data)
    return module, before


def assert_finite_and_trained(module, before):
    after = module.policy.trainable_parameters()
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before)), "no update was taken"


def test_ppo_continues_past_some_nan_rewards_and_counts_them(tmp_path):
    module, before = fit(tmp_path, [*TINY_PPO, "+reward.nan_per_call=1"])
    scalars = read_scalars(tmp_path / "run")
    # 2 epochs x 2 chunks of 4 images, one NaN per chunk; evaluation's own reward is not counted.
    assert scalars["health/nonfinite_rewards"][-1][1] == 4
    assert scalars["health/unhealthy_epochs_in_a_row"][-1][1] == 0
    assert all(v == v for _, v in scalars["reward/mean"])  # the mean is over the finite rewards
    assert_finite_and_trained(module, before)


def test_ppo_stops_when_the_reward_is_always_nan(tmp_path):
    overrides = [*TINY_PPO, "+reward.nan_per_call=4", "trainer.max_epochs=5", "health.max_unhealthy_epochs=2"]
    with pytest.raises(NonFiniteError, match=r"2 epochs in a row .* 4/4 non-finite|2 epochs in a row .*8/8 non-finite"):
        fit(tmp_path, overrides)


def test_seiko_keeps_nan_queries_out_of_the_feedback_but_counts_them(tmp_path):
    overrides = [*TINY_SEIKO, "+reward.nan_per_call=2", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                 "~model.reward_features.pretrained_model_name_or_path"]
    module, before = fit(tmp_path, overrides)
    assert module.oracle_queries == 8 + 16  # paid for, NaN or not
    assert len(module.feedback_rewards) == 8 + 16 - 2 * 2  # one oracle call per round, 2 NaN each
    assert torch.isfinite(module.feedback_rewards).all()
    assert module.health.counts["nonfinite_rewards"] == 4
    assert_finite_and_trained(module, before)


def test_seiko_stops_when_no_query_of_the_first_round_is_finite(tmp_path):
    overrides = [*TINY_SEIKO, "+reward.nan_per_call=100", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                 "~model.reward_features.pretrained_model_name_or_path"]
    with pytest.raises(NonFiniteError, match="8/8 non-finite rewards in round 0: the reward ensemble has no feedback"):
        fit(tmp_path, overrides)


def test_a_nan_gradient_skips_the_step_and_leaves_the_weights_finite():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    (weight * torch.tensor([1.0, float("nan"), 1.0])).sum().backward()
    _, stepped = clipped_step(optimizer, [weight], max_grad_norm=1.0)
    assert not stepped and torch.equal(weight.detach(), torch.ones(3)) and weight.grad is None


def test_guard_stops_only_after_consecutive_unhealthy_epochs():
    guard = NonFiniteGuard(max_nonfinite_fraction=0.5, max_unhealthy_epochs=2)
    assert guard.too_many(3, 4) and not guard.too_many(2, 4) and not guard.too_many(0, 0)
    guard.end_epoch(["bad"])
    guard.end_epoch([])  # a healthy epoch resets the count
    guard.end_epoch(["bad"])
    with pytest.raises(NonFiniteError, match="2 epochs in a row had more than 50% non-finite values; the last: worse"):
        guard.end_epoch(["worse"])
    with pytest.raises(ValueError, match=r"health.max_nonfinite_fraction=1.5 is invalid: must be in \[0, 1\)"):
        NonFiniteGuard(max_nonfinite_fraction=1.5)
