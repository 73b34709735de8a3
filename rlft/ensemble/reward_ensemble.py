"""`RewardEnsemble`: SEIKO's optimistic reward model. K members, each fitted on its own
bootstrap resample of the feedback: either small heads on a shared frozen feature backbone
(cheap, recommended) or K fully independent trainable networks on the images."""

from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class RewardEnsemble(L.LightningModule):
    bootstrap = True  # each head fitted on its own resample of the feedback
    trained_state = ("heads.", "reward_mean", "reward_std")  # what a checkpoint keeps (never the backbone)

    """images (B, C, H, W) in [0, 1] -> head rewards (B, K), differentiable in the images.

    Shared form: `backbone` is any module with `features(images) -> (B, feature_dim)`, frozen,
    with K MLP heads on top. Independent form: `member` is a factory of a network
    `images -> (B, 1)`, called K times (independent initialisations), and the "features" the
    members see are the images themselves. Either way it is trained on batches
    `(features, rewards (B,), counts (B, K))`, where `counts` are each example's bootstrap
    multiplicities per head (`rlft.ensemble.bootstrap.bootstrap_counts`).
    """

    def __init__(self, backbone: nn.Module | None = None, feature_dim: int | None = None, num_heads: int = 4,
                 hidden_dim: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
                 member: Callable[[], nn.Module] | None = None):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads} is invalid: the ensemble needs at least 1 head")
        if (backbone is None) == (member is None):
            raise ValueError("give either a shared `backbone` (with `feature_dim`) or a `member` factory, not both")
        self.save_hyperparameters(ignore=["backbone", "member"], logger=False)
        self.backbone = backbone.requires_grad_(False).eval() if backbone is not None else None
        if member is not None:
            self.heads = nn.ModuleList(member() for _ in range(num_heads))
        else:
            self.heads = nn.ModuleList(
                nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1))
                for _ in range(num_heads)
            )
        # Heads predict standardised rewards; outputs are in reward units. A reward such as
        # JPEG size varies by 0.02 around -0.55: unscaled, the heads would fit the offset only.
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))

    def set_reward_scale(self, rewards: torch.Tensor) -> None:
        self.reward_mean.fill_(float(rewards.mean()))
        self.reward_std.fill_(float(rewards.std(unbiased=False).clamp(min=1e-6)))

    def standardised_heads(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, K) in units of the feedback's std around its mean."""
        return torch.cat([head(features) for head in self.heads], dim=-1)

    def objective_heads(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, K), standardised: what SEIKO aggregates and maximises (the heads)."""
        return self.standardised_heads(features)

    def uncertainty(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B,) in reward units: the heads' spread (ensemble/disagreement)."""
        return self.heads_on_features(features).std(-1, unbiased=False)

    def observe_feedback(self, features: torch.Tensor) -> None:
        """Called after each fit with all the feedback's features; the bootstrap needs nothing."""

    def heads_on_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.standardised_heads(features) * self.reward_std + self.reward_mean

    def to_reward_units(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.reward_std + self.reward_mean

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What the heads read, and what SEIKO stores per query: the frozen backbone's
        features, or (independent members) the images."""
        return self.backbone.features(images) if self.backbone is not None else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.heads_on_features(self.features(images))

    def training_step(self, batch, batch_idx):
        features, rewards, counts = batch
        targets = (rewards - self.reward_mean) / self.reward_std
        errors = (self.standardised_heads(features) - targets[:, None]) ** 2  # (B, K)
        # Each head's loss is the mean squared error over its own resample.
        loss = ((errors * counts).sum(0) / counts.sum(0).clamp(min=1)).sum()
        self.log("ensemble/train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        features, rewards = batch[0], batch[1]
        mae = F.l1_loss(self.heads_on_features(features).mean(-1), rewards)
        self.log("ensemble/val_mae", mae, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.heads.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
