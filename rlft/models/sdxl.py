"""Stable Diffusion XL through diffusers, sampled with DDIM as DDPO samples SD 1.x (DDPO on SDXL).

What SDXL does its own way, all of it here (`SDXLModel`):
- two text encoders: prompts are encoded by `StableDiffusionXLPipeline.encode_prompt` itself
  (both CLIPs' penultimate hidden states concatenated, (B, 77, 2048), and CLIP-G's pooled
  projection, (B, 1280)); like the pipeline without a negative prompt, the empty prompt (the
  unconditional branch) is zeros when the pipeline's `force_zeros_for_empty_prompt` says so;
- the UNet's added conditioning: the pooled embedding as `text_embeds` and `add_time_ids`
  (original size, crop corner, target size: (H, W, 0, 0, H, W) of the sampled image);
- the VAE's scale; LoRA in the UNet format `StableDiffusionXLPipeline.load_lora_weights` reads.
"""


import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel, unet_denoise
from rlft.models.loading import read_pipeline

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class SDXLModel(DiffusionModel):
    lora_loader = "StableDiffusionXLLoraLoaderMixin"

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae, force_zeros_for_empty_prompt: bool = True):
        super().__init__()
        self.text_encoder, self.text_encoder_2, self.vae = text_encoder, text_encoder_2, vae
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # encode_prompt's host, a plain attribute (not a submodule): the encoders are ours
        self.__dict__["pipeline"] = StableDiffusionXLPipeline(
            vae=None, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=None, scheduler=None,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, _, pooled, _ = self.pipeline.encode_prompt(list(prompts), device=self.text_encoder.device,
                                                           do_classifier_free_guidance=False)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p == "" for p in prompts], device=tokens.device)
            tokens = torch.where(empty[:, None, None], torch.zeros_like(tokens), tokens)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return PromptEmbeds(tokens, pooled)

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        height, width = (side * self.vae_scale_factor for side in latents.shape[-2:])
        time_ids = torch.tensor([height, width, 0, 0, height, width], device=latents.device, dtype=embeds.tokens.dtype)
        added = {"text_embeds": embeds.pooled, "time_ids": time_ids.expand(len(latents), -1)}
        return unet_denoise(denoiser, latents, timesteps, embeds, added_cond_kwargs=added)


def load_sdxl(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the UNet), scheduler (DDIM, from the
    pipeline's scheduler config, as DDPO), model (`SDXLModel`: both CLIPs, the VAE), base."""
    with read_pipeline("Stable Diffusion XL", "StableDiffusionXLPipeline", "model=sdxl", COMPONENTS,
                       pretrained, revision, variant, dtype) as read:
        f = read.files
        unet = f.weights(UNet2DConditionModel, "unet")
        vae = f.frozen(AutoencoderKL, "vae")
        text_encoder = f.frozen(CLIPTextModel, "text_encoder")
        text_encoder_2 = f.frozen(CLIPTextModelWithProjection, "text_encoder_2")
        tokenizer, tokenizer_2 = f.files(CLIPTokenizer, "tokenizer"), f.files(CLIPTokenizer, "tokenizer_2")
        # DDIM from the pipeline's (Euler) scheduler config, which names no set_alpha_to_one: DDIM's
        # default (true) would make the last step deterministic, with no log-probability; SD 1.x's
        # config says false, and so does rlft for SDXL.
        scheduler = DDIMScheduler.from_config(f.config(DDIMScheduler, "scheduler"), set_alpha_to_one=False)
        pipeline_config = f.config(StableDiffusionXLPipeline)
    model = SDXLModel(text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae,
                      force_zeros_for_empty_prompt=pipeline_config.get("force_zeros_for_empty_prompt", True))
    return read.components(unet, scheduler, model, gradient_checkpointing, vae_decode)
