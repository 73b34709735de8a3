"""Fitting a reward model on the oracle's feedback, shared by SEIKO and the learned reward."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from rlft.ensemble.bootstrap import bootstrap_counts
from rlft.ensemble.reward_ensemble import RewardEnsemble


def validation_split(n: int, val_fraction: float) -> int:
    """How many of n answers are held out: the fraction, at least one."""
    return max(1, int(n * val_fraction))


def fit_reward_model(model: RewardEnsemble, features: torch.Tensor, rewards: torch.Tensor, epochs: int,
                     batch_size: int, val_fraction: float, accelerator="cpu") -> dict[str, float]:
    """Refits `model` on all the feedback `(features (N, ...), rewards (N,))` with a Lightning
    Trainer of its own: a random `val_fraction` held out for `ensemble/val_mae`, each head on
    its own bootstrap resample of the rest (all of it for a model without bootstrap, as
    SEIKO-UCB's). The model is frozen again afterwards. -> its `ensemble/` metrics."""
    n = len(rewards)
    order = torch.randperm(n)
    n_val = validation_split(n, val_fraction)
    val, train = order[:n_val], order[n_val:]
    heads = len(model.heads)
    counts = bootstrap_counts(len(train), heads) if model.bootstrap else torch.ones(len(train), heads)
    train_data = TensorDataset(features[train], rewards[train], counts)
    val_data = TensorDataset(features[val], rewards[val])
    model.set_reward_scale(rewards[train])
    model.heads.requires_grad_(True)
    trainer = L.Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator=accelerator, devices=1, num_sanity_val_steps=0,
        check_val_every_n_epoch=epochs,
    )
    trainer.fit(model, DataLoader(train_data, batch_size=batch_size, shuffle=True), DataLoader(val_data, batch_size=1024))
    model.heads.requires_grad_(False)  # a policy's loss must not move the heads
    model.observe_feedback(features)  # SEIKO-UCB: its Sigma over all the feedback
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ensemble/")}
