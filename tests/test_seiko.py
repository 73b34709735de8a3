"""SEIKO end to end on a tiny model: the query budget, the oracle's only call site, logging."""

import math

import pytest
import torch

from rlft.diffusion.reference import AdapterReference
from rlft.tools.tensorboard import read_scalars
from rlft.run.train import build
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg

TINY_SEIKO = [
    "algorithm=seiko",
    "algorithm.queries_per_round=[8,16]",
    "algorithm.epochs_per_round=2",
    "algorithm.truncation_steps=2",
    "algorithm.train_batch_size=4",
    "algorithm.ensemble_epochs=3",
    "algorithm.evaluation.samples_per_prompt=1",
    "data.samples_per_epoch=8",
    "policy.num_steps=3",
    "model.reward_feature_dim=4",
]


class PixelFeatures(torch.nn.Module):
    """A tiny frozen backbone: mean intensity of 4 image quadrants."""

    def features(self, images):
        return torch.nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


class CountingOracle:
    def __init__(self, reward):
        self.reward, self.calls, self.images = reward, 0, 0

    def __call__(self, images, prompts):
        self.calls += 1
        self.images += len(images)
        return self.reward(images, prompts)


@pytest.fixture(scope="module")
def seiko_run(tmp_path_factory):
    """One tiny SEIKO run, shared by the tests that inspect it."""
    tmp_path = tmp_path_factory.mktemp("seiko")
    tiny_model_dir = save_tiny_model(tmp_path_factory.mktemp("model"))
    cfg = compose_cfg([*TINY_SEIKO, f"model.pretrained={tiny_model_dir}",
                       "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                       "~model.reward_features.pretrained_model_name_or_path"], output_dir=str(tmp_path))
    module, data, trainer = build(cfg)
    module.oracle = CountingOracle(module.oracle)
    trainer.fit(module, datamodule=data)
    return module, cfg, tmp_path


def test_oracle_is_called_only_for_the_budgeted_queries(seiko_run):
    module, cfg, run_dir = seiko_run
    budget = sum(cfg.algorithm.queries_per_round)
    assert module.oracle.images == budget == module.oracle_queries
    assert module.oracle.calls == len(cfg.algorithm.queries_per_round)  # once per round, in the query step
    assert read_scalars(run_dir)["oracle/queries"][-1][1] == budget


def test_logs_the_documented_metrics_finite(seiko_run):
    _, cfg, run_dir = seiko_run
    scalars = read_scalars(run_dir)
    for tag in ("oracle/queries", "oracle/reward_mean", "eval/oracle_reward", "ensemble/disagreement",
                "ensemble/train_loss", "ensemble/val_mae", "train/reward_model", "train/kl"):
        assert tag in scalars, sorted(scalars)
        assert all(math.isfinite(v) for _, v in scalars[tag]), (tag, scalars[tag])
    # step 0: the base model before any query; then one point per epoch
    assert [s for s, _ in scalars["eval/oracle_reward"]] == list(range(0, cfg.algorithm.epochs + 1))
    assert scalars["oracle/queries"][0] == (0, 0.0)
    assert [v for _, v in scalars["oracle/queries"]][1:] == [8, 8, 24, 24]
    # Work (x2 for CFG): a round's queries sample 3 steps (1 each); a fine-tuning batch of 4 runs
    # step 0 without grad (1), steps 1-2 with grad and checkpointing (4) and their KL
    # reference (1): 8 + 64 + 16 = 88, two batches an epoch. Round 0: 48 queries, round 1: 96.
    assert [v for _, v in scalars["work/unet_evals"]] == [48 + 176, 400, 400 + 96 + 176, 848]


def test_reference_policy_is_the_previous_rounds(seiko_run):
    module, _, _ = seiko_run
    assert isinstance(module.reference, AdapterReference)  # round 1's: a second adapter of the same denoiser
    pairs = list(module.reference.pairs())
    assert pairs and all(mine.requires_grad and not theirs.requires_grad for mine, theirs in pairs)
    assert any(not torch.equal(mine, theirs) for mine, theirs in pairs)  # the policy trained on after the round began
    assert module.policy.trainable_parameters() == [mine for mine, _ in pairs]


@pytest.mark.parametrize(
    "override,match",
    [("algorithm.queries_per_round=[]", "queries_per_round"), ("algorithm.queries_per_round=[8,0]", "queries_per_round"),
     ("algorithm.num_heads=0", "num_heads=0"), ("algorithm.truncation_steps=50", "truncation_steps")],
)
def test_invalid_seiko_settings_fail_before_any_work(override, match):
    from rlft.run.validation import ConfigError, validate

    with pytest.raises(ConfigError, match=match):
        validate(compose_cfg(["algorithm=seiko", override]))


def test_independent_members_run_end_to_end(tmp_path, tiny_model_dir):
    cfg = compose_cfg([*TINY_SEIKO, "ensemble=independent", "algorithm.queries_per_round=[8]",
                       f"model.pretrained={tiny_model_dir}"], output_dir=str(tmp_path))
    module, data, trainer = build(cfg)
    trainer.fit(module, datamodule=data)
    assert module.oracle_queries == 8
    assert module.feedback_features.shape == (8, 1, 8, 8)  # members read the images themselves
    scalars = read_scalars(tmp_path)
    assert all(math.isfinite(v) for _, v in scalars["ensemble/val_mae"] + scalars["train/reward_model"])
