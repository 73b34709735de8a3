"""Training of the digit classifier behind the `digit_alignment` reward."""

import lightning as L
import torch
import torch.nn.functional as F

from rlft.models.digits import DigitClassifier


class DigitClassifierTraining(L.LightningModule):
    def __init__(self, lr=2e-3, max_steps=1000, channels=32, feature_dim=64, noise_std=0.1):
        super().__init__()
        self.save_hyperparameters()
        self.classifier = DigitClassifier(channels=channels, feature_dim=feature_dim)

    def training_step(self, batch, batch_idx):
        images, labels = batch  # images in [-1, 1]
        x = (images + 1) / 2
        # Generated digits are slightly noisy; a little input noise keeps the reward robust.
        x = x + self.hparams.noise_std * torch.randn_like(x)
        loss = F.cross_entropy(self.classifier(x), labels)
        self.log("pretrain/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        accuracy = (self.classifier((images + 1) / 2).argmax(-1) == labels).float().mean()
        self.log("pretrain/val_accuracy", accuracy, prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def save_pretrained(self, path: str) -> None:
        self.classifier.save_pretrained(path)
