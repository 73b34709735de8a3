"""Stable Diffusion 1.x/2.x through diffusers: the model users run on GPUs.

`load_stable_diffusion` reads a `StableDiffusionPipeline` directory or hub id component by
component with diffusers'/transformers' own `from_pretrained` (the code path a user runs
with real weights; the tests run it on a tiny pipeline they save). The VAE and the text
encoder are frozen in the inference dtype; the UNet's base weights too, while its LoRA
weights (added by `DiffusionPolicy`) are kept in float32.
"""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel, unet_denoise
from rlft.models.loading import read_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class StableDiffusionModel(DiffusionModel):
    """Stable Diffusion 1.x/2.x: prompts -> CLIP text encoder hidden states (B, 77, D), as
    StableDiffusionPipeline encodes them (padding to the tokenizer's max length, truncation);
    a UNet with cross-attention; the VAE's scaling; LoRA in the UNet format its pipeline loads."""

    def __init__(self, tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, vae: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.vae = vae

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return PromptEmbeds(self.text_encoder(ids)[0])

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        return unet_denoise(denoiser, latents, timesteps, embeds)


def load_stable_diffusion(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "float16",
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the UNet), scheduler (DDIM, from the pipeline's
    scheduler config), model (`StableDiffusionModel`: CLIP and the VAE), base (its fingerprint)."""
    with read_pipeline("Stable Diffusion", "StableDiffusionPipeline", "model=stable_diffusion (or sd15, sd21)", COMPONENTS,
                       pretrained, revision, variant, dtype) as read:
        f = read.files
        unet = f.weights(UNet2DConditionModel, "unet")
        vae = f.frozen(AutoencoderKL, "vae")
        text_encoder = f.frozen(CLIPTextModel, "text_encoder")
        tokenizer = f.files(CLIPTokenizer, "tokenizer")
        # DDIM, configured from the pipeline's own scheduler (SD ships PNDM), as DDPO does.
        scheduler = DDIMScheduler.from_config(f.config(DDIMScheduler, "scheduler"))
    return read.components(unet, scheduler, StableDiffusionModel(tokenizer, text_encoder, vae), gradient_checkpointing, vae_decode)
