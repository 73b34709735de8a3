import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rlft.ensemble.bootstrap import bootstrap_counts
from rlft.ensemble.reward_ensemble import RewardEnsemble


class FlattenBackbone(nn.Module):
    def features(self, images):
        return images.flatten(1)


def test_bootstrap_counts_are_resamples():
    counts = bootstrap_counts(200, 4, torch.Generator().manual_seed(0))
    assert counts.shape == (200, 4)
    assert (counts.sum(0) == 200).all()  # n draws per head
    assert (counts == 0).float().mean() > 0.3  # about e^-1 of examples left out of each resample
    assert not torch.equal(counts[:, 0], counts[:, 1])  # every head its own resample


def fit(ensemble, features, rewards, epochs=60):
    ensemble.set_reward_scale(rewards)
    counts = bootstrap_counts(len(features), ensemble.hparams.num_heads, torch.Generator().manual_seed(0))
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(ensemble, DataLoader(TensorDataset(features, rewards, counts), batch_size=64, shuffle=True),
                DataLoader(TensorDataset(features, rewards), batch_size=256))
    return trainer.callback_metrics


def test_heads_fit_the_feedback_and_disagree_away_from_it():
    torch.manual_seed(0)
    images = torch.rand(256, 1, 2, 2) * 0.5  # feedback only where pixels are below 0.5
    target = lambda x: x.flatten(1).sum(1)
    ensemble = RewardEnsemble(FlattenBackbone(), feature_dim=4, num_heads=4, hidden_dim=32, lr=1e-2)
    metrics = fit(ensemble, images.flatten(1), target(images))
    assert metrics["ensemble/val_mae"] < 0.1 * target(images).std()
    with torch.no_grad():
        near = ensemble(torch.rand(256, 1, 2, 2) * 0.5).std(-1).mean()
        far = ensemble(1.5 + torch.rand(256, 1, 2, 2)).std(-1).mean()
    assert far > 2 * near  # the bootstrap heads agree on the data and disagree off it


def test_output_is_differentiable_in_the_images():
    ensemble = RewardEnsemble(FlattenBackbone(), feature_dim=4, num_heads=3)
    images = torch.rand(2, 1, 2, 2, requires_grad=True)
    out = ensemble(images)
    assert out.shape == (2, 3)
    out.sum().backward()
    assert images.grad.abs().sum() > 0


def test_zero_heads_is_a_clear_error():
    with pytest.raises(ValueError, match="num_heads=0"):
        RewardEnsemble(FlattenBackbone(), feature_dim=4, num_heads=0)


def test_small_rewards_far_from_zero_are_fitted():
    """JPEG-size-like rewards (-0.55 +- 0.02): standardised targets make them learnable."""
    torch.manual_seed(1)
    images = torch.rand(256, 1, 2, 2)
    rewards = -0.55 + 0.02 * (images.flatten(1).sum(1) - 2)
    ensemble = RewardEnsemble(FlattenBackbone(), feature_dim=4, num_heads=4, hidden_dim=32, lr=1e-2)
    metrics = fit(ensemble, images.flatten(1), rewards)
    assert metrics["ensemble/val_mae"] < 0.2 * rewards.std()


class TinyMember(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.SiLU(), nn.Linear(16, 1))

    def forward(self, images):
        return self.net(images)


def test_independent_members_fit_on_images_and_start_different():
    torch.manual_seed(2)
    images = torch.rand(256, 1, 2, 2)
    rewards = images.flatten(1).sum(1)
    ensemble = RewardEnsemble(member=TinyMember, num_heads=3, lr=1e-2)
    assert torch.equal(ensemble.features(images), images)
    first = [p for p in ensemble.heads[0].parameters()][0]
    second = [p for p in ensemble.heads[1].parameters()][0]
    assert not torch.equal(first, second)  # independent initialisations
    metrics = fit(ensemble, images, rewards)
    assert metrics["ensemble/val_mae"] < 0.1 * rewards.std()


def test_backbone_and_member_are_exclusive():
    with pytest.raises(ValueError, match="either"):
        RewardEnsemble(FlattenBackbone(), feature_dim=4, member=TinyMember)
