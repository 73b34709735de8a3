"""Stable Diffusion 1.x/2.x through diffusers: the model users run on GPUs.

`load_stable_diffusion` reads a `StableDiffusionPipeline` directory or hub id component by
component with diffusers'/transformers' own `from_pretrained` (the code path a user runs
with real weights; the tests run it on a tiny pipeline they save). The VAE and the text
encoder are frozen in the inference dtype; the UNet's base weights too, while its LoRA
weights (added by `DiffusionPolicy`) are kept in float32.
"""

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from rlft.diffusion.policy import PromptEmbeds
from rlft.models.base import DiffusionModel, save_unet_lora, unet_denoise, vae_decode
from rlft.models.fingerprint import base_fingerprint

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def check_pipeline_class(path: Path, expected: str, choice: str) -> None:
    """A local pipeline directory's `model_index.json` names its pipeline class: a directory of
    the other model family is refused before anything is loaded."""
    index = path / "model_index.json"
    if not index.is_file():
        return  # the component check that follows names what is missing
    found = json.loads(index.read_text()).get("_class_name")
    if found != expected:
        raise ValueError(
            f"model.pretrained={str(path)!r} holds a {found}, not a {expected}: choose the model config of its family "
            f"({FAMILY_CHOICES.get(found, 'no rlft model config loads it')}), not {choice}"
        )


FAMILY_CHOICES = {
    "StableDiffusionPipeline": "model=stable_diffusion, sd15 or sd21",
    "StableDiffusion3Pipeline": "model=sd3, sd35_medium or sd35_large",
    "FluxPipeline": "model=flux_dev or flux_schnell",
    "StableDiffusionXLPipeline": "model=sdxl",
    "QwenImagePipeline": "model=qwen_image",
    "WanPipeline": "model=wan21_t2v_1_3b (or wan)",
    "Flux2KleinPipeline": "model=flux2_klein_4b",
}


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
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is invalid: must be one of {sorted(DTYPES)}")
    local = Path(pretrained)
    if local.exists() or pretrained.startswith((".", "/")):
        check_pipeline_class(local, "StableDiffusionPipeline", "model=stable_diffusion (or sd15, sd21)")
        missing = [c for c in COMPONENTS if not (local / c).is_dir()]
        if missing:
            raise FileNotFoundError(
                f"model.pretrained={pretrained!r} is not a Stable Diffusion pipeline directory: missing {missing} "
                f"(expected {list(COMPONENTS)}, as StableDiffusionPipeline.save_pretrained writes)"
            )
    torch_dtype = DTYPES[dtype]
    common = {"revision": revision}
    try:
        unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, torch_dtype=torch_dtype, **common)
        vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant, torch_dtype=torch_dtype, **common)
        text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, dtype=torch_dtype, **common)
        tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **common)
        # DDIM, configured from the pipeline's own scheduler (SD ships PNDM), as DDPO does.
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(pretrained, subfolder="scheduler", **common))
    except (OSError, ValueError) as error:
        raise OSError(f"could not load Stable Diffusion from model.pretrained={pretrained!r} "
                      f"(revision={revision}, variant={variant}): {error}") from error
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # recompute activations in backward: memory for time
    return {
        "denoiser": unet,
        "scheduler": scheduler,
        "model": StableDiffusionModel(tokenizer, text_encoder.requires_grad_(False).eval(), vae.requires_grad_(False).eval()),
        "base": base_fingerprint(pretrained, ("model_index.json", *COMPONENTS), dtype, revision, variant),
    }
