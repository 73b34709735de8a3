"""FLUX.2 [klein] through diffusers: Black Forest Labs' small FLUX.2 (4B), a rectified-flow
transformer conditioned by Qwen3.

What FLUX.2 klein does its own way, all of it here (`Flux2KleinModel`):
- the latents the sampler steps are *patchified* and normalised: 2x2 patches of the 32-channel
  VAE latents stacked as channels, (B, 4C, H/2, W/2) (`Flux2KleinPipeline.prepare_latents` draws
  its noise there), normalised by the VAE's batch-norm running statistics; `decode`
  un-normalises, unpatchifies and decodes;
- the transformer takes them as a sequence, (B, H/2 * W/2, 4C), with 4-d positional ids for
  the image and the text tokens, `timestep / 1000`, no guidance embedding;
- prompts are encoded by `Flux2KleinPipeline.encode_prompt` itself: Qwen3's chat template, the
  hidden states of three of its layers (`text_encoder_out_layers`) stacked;
- the schedule's shift `mu` is FLUX.2's empirical one, from the sequence length and the steps;
- the step-distilled checkpoints (the pipeline's `is_distilled`) take no guidance: one branch;
- LoRA in the format `Flux2KleinPipeline.load_lora_weights` reads.
"""


import numpy as np
import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu
from transformers import AutoTokenizer, Qwen3ForCausalLM

from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel
from rlft.models.loading import read_pipeline

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


class Flux2KleinModel(DiffusionModel):
    lora_loader = "Flux2LoraLoaderMixin"
    lora_format = "transformer"
    text_encoders = ("text_encoder",)

    def __init__(self, text_encoder, tokenizer, vae, is_distilled: bool, max_sequence_length: int = 512,
                 text_encoder_out_layers: tuple[int, ...] = (9, 18, 27)):
        super().__init__()
        self.text_encoder, self.vae = text_encoder, vae
        self.max_sequence_length = max_sequence_length
        self.text_encoder_out_layers = tuple(text_encoder_out_layers)
        self.guidance = "none" if is_distilled else "cfg"  # distilled: the pipeline ignores the scale
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        # encode_prompt's host, a plain attribute (not a submodule): the encoder is ours
        self.__dict__["pipeline"] = Flux2KleinPipeline(scheduler=None, vae=None, text_encoder=text_encoder,
                                                       tokenizer=tokenizer, transformer=None, is_distilled=is_distilled)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, _ = self.pipeline.encode_prompt(list(prompts), device=self.text_encoder.device,
                                                max_sequence_length=self.max_sequence_length,
                                                text_encoder_out_layers=self.text_encoder_out_layers)
        return PromptEmbeds(tokens)

    def default_latent_size(self, denoiser) -> int:
        return 1024 // (2 * self.vae_scale_factor)  # 1024x1024 images, the pipeline's default

    def timestep_schedule(self, num_steps: int, latent_shape: tuple[int, ...]) -> dict:
        mu = compute_empirical_mu(image_seq_len=latent_shape[-2] * latent_shape[-1], num_steps=num_steps)
        return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps), "mu": mu}

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        batch, channels, height, width = latents.shape
        packed = Flux2KleinPipeline._pack_latents(latents)
        img_ids = Flux2KleinPipeline._prepare_latent_ids(latents).to(latents.device)
        txt_ids = Flux2KleinPipeline._prepare_text_ids(embeds.tokens).to(latents.device)
        out = denoiser(hidden_states=packed, timestep=timesteps.to(latents.dtype) / 1000, guidance=None,
                       encoder_hidden_states=embeds.tokens, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return out.permute(0, 2, 1).reshape(batch, channels, height, width)  # the ids are row-major

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(latents.device, self.vae.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(latents.device, self.vae.dtype)
        unpatched = Flux2KleinPipeline._unpatchify_latents(latents.to(self.vae.dtype) * std + mean)
        return ((self.vae.decode(unpatched, return_dict=False)[0].float() + 1) / 2).clamp(0, 1)


def load_flux2_klein(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    max_sequence_length: int = 512,
    text_encoder_out_layers: tuple[int, ...] = (9, 18, 27),
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the FLUX.2 transformer), scheduler,
    model (`Flux2KleinModel`: Qwen3, the VAE), base (its fingerprint)."""
    with read_pipeline("FLUX.2 klein", "Flux2KleinPipeline", "model=flux2_klein_4b", COMPONENTS,
                       pretrained, revision, variant, dtype) as read:
        f = read.files
        transformer = f.weights(Flux2Transformer2DModel, "transformer")
        vae = f.frozen(AutoencoderKLFlux2, "vae")
        text_encoder, tokenizer = f.frozen(Qwen3ForCausalLM, "text_encoder"), f.files(AutoTokenizer, "tokenizer")
        scheduler = f.files(FlowMatchEulerDiscreteScheduler, "scheduler")
        pipeline_config = f.config(Flux2KleinPipeline)
    model = Flux2KleinModel(text_encoder, tokenizer, vae, is_distilled=bool(pipeline_config.get("is_distilled", False)),
                            max_sequence_length=max_sequence_length, text_encoder_out_layers=text_encoder_out_layers)
    return read.components(transformer, scheduler, model, gradient_checkpointing, vae_decode)
