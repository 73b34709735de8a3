"""reward=ensemble: a learned reward fitted on the oracle's answers, for PPO and the others."""

import math

import pytest
import torch

from rlft.ensemble.aggregation import LCB, Mean
from rlft.ensemble.reward_ensemble import RewardEnsemble
from rlft.rewards.learned import LearnedReward
from rlft.tools.tensorboard import read_scalars
from rlft.run.train import build
from rlft.run.validation import validate
from tests.manual import undocumented_metrics
from tests.test_config import compose_cfg
from tests.test_end_to_end import TINY_RUN
from tests.test_seiko import CountingOracle, PixelFeatures

PIXEL_FEATURES = ["model.reward_feature_dim=4", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                  "~model.reward_features.pretrained_model_name_or_path"]


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def learned(aggregation=Mean(), **settings) -> LearnedReward:
    torch.manual_seed(0)
    model = RewardEnsemble(PixelFeatures(), feature_dim=4, num_heads=4, hidden_dim=16, lr=1e-2)
    return LearnedReward(brightness, model, aggregation, fit_epochs=150, **settings)


def test_the_fitted_model_predicts_the_oracle_on_images_it_was_not_fitted_on():
    reward = learned(queries=128)
    g = torch.Generator().manual_seed(1)
    train, test = torch.rand(128, 1, 8, 8, generator=g), torch.rand(64, 1, 8, 8, generator=g)
    reward.fit(0, reward.model.features(train), brightness(train, None))
    predicted, truth = reward(test, [""] * 64), brightness(test, None)
    correlation = torch.corrcoef(torch.stack([predicted, truth]))[0, 1]
    assert correlation > 0.9, correlation
    # pessimism: lcb scores every image below the heads' mean, by kappa times their spread
    reward.aggregation = LCB(2.0)
    spread = reward.disagreement(test)
    torch.testing.assert_close(reward(test, [""] * 64), predicted - 2.0 * spread, rtol=1e-4, atol=1e-6)
    assert (spread > 0).all()


def test_it_refits_before_epoch_0_then_every_period_once_and_never_answers_unfitted():
    once, every_3 = learned(), learned(refresh_every_n_epochs=3)
    assert [e for e in range(10) if once.due(e)] == [0]
    assert [e for e in range(10) if every_3.due(e)] == [0, 3, 6, 9]
    with pytest.raises(RuntimeError, match="asked before it was fitted"):
        once(torch.rand(2, 1, 8, 8), ["", ""])
    images = torch.rand(16, 1, 8, 8)
    every_3.fit(3, every_3.model.features(images), brightness(images, None))
    assert not every_3.due(3)  # a resumed epoch does not fit twice


@pytest.mark.parametrize("overrides,match", [
    (["reward.queries=1"], "reward.queries=1 is invalid: with reward.val_fraction=0.1 it leaves 1 answer.s. for validation"),
    (["reward.val_fraction=1.0"], "reward.val_fraction=1.0 is invalid: must be in"),
    (["reward.refresh_every_n_epochs=18"], "the run has 18 epochs, so it would never refit"),
    (["reward.refresh_every_n_epochs=-1"], "must be an integer >= 0"),
    (["algorithm=seiko"], "algorithm=seiko fits its own reward model on the oracle"),
    (["trainer.devices=2", "trainer.strategy=ddp"], "must be 1 with reward=ensemble"),
])
def test_bad_learned_reward_settings_fail_at_composition(overrides, match):
    with pytest.raises(ValueError, match=match):
        validate(compose_cfg(["reward=ensemble", *overrides]))


def test_ppo_on_a_learned_reward_asks_the_oracle_only_for_its_budget_and_logs_gold_and_proxy(tiny_model_dir, tmp_path):
    cfg = compose_cfg([*TINY_RUN, f"model.pretrained={tiny_model_dir}", "reward=ensemble", "reward.queries=8",
                       "reward.refresh_every_n_epochs=1", "reward.fit_epochs=3", "aggregation=lcb",
                       "algorithm.eval_every_n_epochs=1", "algorithm.evaluation.samples_per_prompt=1",
                       *PIXEL_FEATURES], output_dir=str(tmp_path))
    module, data, trainer = build(cfg)
    assert isinstance(module.reward_fn, LearnedReward) and isinstance(module.reward_fn.aggregation, LCB)
    assert not isinstance(module.evaluation.reward_fn, LearnedReward)  # the gold reward measures
    module.learned.oracle = CountingOracle(module.learned.oracle)
    trainer.fit(module, datamodule=data)
    assert module.learned.oracle.images == 16 == module.oracle_queries  # 8 per fit, 2 fits; rollouts ask the model
    scalars = read_scalars(tmp_path)
    assert [v for _, v in scalars["oracle/queries"]] == [8, 16]
    for tag in ("eval/oracle_reward", "eval/proxy_reward", "eval/proxy_gap", "proxy/disagreement",
                "ensemble/val_mae", "oracle/reward_mean"):
        assert tag in scalars and all(math.isfinite(v) for _, v in scalars[tag]), (tag, sorted(scalars))
    for (_, gap), (_, proxy), (_, gold) in zip(scalars["eval/proxy_gap"], scalars["eval/proxy_reward"],
                                               scalars["eval/oracle_reward"]):
        assert gap == pytest.approx(proxy - gold, abs=1e-6)
    assert all(v > 0 for _, v in scalars["proxy/disagreement"])
    assert not undocumented_metrics(scalars), "docs/reference/metrics.md lacks a tag"
