"""`RewardEnsemble`: K reward heads on a shared frozen feature backbone (SEIKO's
optimistic reward model), each fitted on its own bootstrap resample of the feedback."""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


class RewardEnsemble(L.LightningModule):
    """images (B, C, H, W) in [0, 1] -> head rewards (B, K), differentiable in the images.

    `backbone` is any module with `features(images) -> (B, feature_dim)`; it is frozen (the
    cheap, recommended form in DESIGN.md). Trained on batches of precomputed features
    `(features (B, F), rewards (B,), counts (B, K))`, where `counts` are each example's
    bootstrap multiplicities per head (`rlft.ensemble.bootstrap.bootstrap_counts`).
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, num_heads: int = 4, hidden_dim: int = 64,
                 lr: float = 1e-3, weight_decay: float = 1e-4):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads} is invalid: the ensemble needs at least 1 head")
        self.save_hyperparameters(ignore=["backbone"], logger=False)
        self.backbone = backbone.requires_grad_(False).eval()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, 1)) for _ in range(num_heads)
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

    def heads_on_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.standardised_heads(features) * self.reward_std + self.reward_mean

    def to_reward_units(self, standardised: torch.Tensor) -> torch.Tensor:
        return standardised * self.reward_std + self.reward_mean

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(images)

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
