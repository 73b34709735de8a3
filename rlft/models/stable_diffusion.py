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
from rlft.models.base import DiffusionModel, check_pipeline, loading, save_unet_lora, unet_denoise, vae_decode
from rlft.models.fingerprint import base_fingerprint

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

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode(self.vae, latents)

    def save_lora(self, denoiser, dirpath) -> None:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin

        save_unet_lora(denoiser, dirpath, StableDiffusionLoraLoaderMixin)


def load_stable_diffusion(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "float16",
    gradient_checkpointing: bool = False,
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the UNet), scheduler (DDIM, from the pipeline's
    scheduler config), model (`StableDiffusionModel`: CLIP and the VAE), base (its fingerprint)."""
    torch_dtype = check_pipeline(pretrained, dtype, "StableDiffusionPipeline", "model=stable_diffusion (or sd15, sd21)", COMPONENTS, "Stable Diffusion")
    common = {"revision": revision}
    with loading("Stable Diffusion", pretrained, revision, variant):
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, torch_dtype=torch_dtype, **common)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant, torch_dtype=torch_dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, dtype=torch_dtype, **common)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **common)
        # DDIM, configured from the pipeline's own scheduler (SD ships PNDM), as DDPO does.
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(pretrained, subfolder="scheduler", **common))
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # recompute activations in backward: memory for time
    return {
        "denoiser": unet,
        "scheduler": scheduler,
        "model": StableDiffusionModel(tokenizer, text_encoder.requires_grad_(False).eval(), vae.requires_grad_(False).eval()),
        "base": base_fingerprint(pretrained, ("model_index.json", *COMPONENTS), dtype, revision, variant),
    }
