"""The model interface: what a model family does its own way, in one object per family.

`DiffusionPolicy`, the samplers, the algorithms and the rewards call only this interface and
never ask which family a model is. A family module under `rlft/models/` subclasses
`DiffusionModel` and says how it

- encodes prompts (`encode_prompts`: its text encoders, templates, pooled embeddings, masks),
- shapes its latents (`latent_shape`: (B, C, H, W), or (B, C, F, H, W) for video),
- calls its denoiser once (`denoise`: packing, positional ids, the timestep's scale, pooled
  projections, a guidance embedding),
- combines the two branches of classifier-free guidance (`combine_guidance`),
- schedules its timesteps (`timestep_schedule`: a static shift, or FLUX's shift from the
  latent sequence length),
- decodes latents to images in [0, 1] (`decode`), and
- writes its LoRA so that its own diffusers pipeline loads it (`save_lora`).

The trained denoiser is the policy's (LoRA, compile and checkpoints act on `policy.denoiser`):
it is passed to `denoise` and `save_lora`, never held here. What a `DiffusionModel` holds is
frozen: text encoders and the VAE.
"""


from pathlib import Path

import numpy as np
import torch
from peft.utils import get_peft_model_state_dict
from torch import nn

from rlft.types import PromptEmbeds


class DiffusionModel(nn.Module):
    #: "cfg": classifier-free guidance, both branches batched in one denoiser call;
    #: "embedded": the scale is an input of the denoiser (FLUX.1-dev), one branch.
    guidance = "cfg"
    #: the attributes holding text encoders, dropped by `release_text_encoders`
    text_encoders: tuple[str, ...] = ("text_encoder", "text_encoder_2", "text_encoder_3")
    #: the family pipeline's LoRA mixin in `diffusers.loaders`, whose `save_lora_weights` writes what
    #: the plain pipeline's `load_lora_weights` reads; and its key format: "unet" (diffusers' UNet
    #: keys) or "transformer" (peft's keys, as diffusers' own LoRA training scripts write them)
    lora_loader: str = "StableDiffusionLoraLoaderMixin"
    lora_format: str = "unet"

    def release_text_encoders(self) -> list[str]:
        """Drop the text encoders (and a host pipeline's references to them), so that their
        memory is freed once every prompt a run uses is encoded (`DiffusionPolicy.cache_prompts`).
        Returns the names of those that were held."""
        released = []
        for name in self.text_encoders:
            if getattr(self, name, None) is not None:
                setattr(self, name, None)
                released.append(name)
            pipeline = self.__dict__.get("pipeline")
            if pipeline is not None and getattr(pipeline, name, None) is not None:
                setattr(pipeline, name, None)
        return released

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        raise NotImplementedError

    def check_prompts(self, prompts: list[str]) -> None:
        """Refuse a prompt the text encoders cannot take, without encoding it: run when a run is
        built, before the encoding on the device. The hub's tokenizers take any text."""

    def default_latent_size(self, denoiser: nn.Module) -> int:
        """The latent side sampled at when `policy.latent_size` is null."""
        return denoiser.config.sample_size

    def latent_shape(self, denoiser: nn.Module, batch: int, latent_size: int) -> tuple[int, ...]:
        return (batch, denoiser.config.in_channels, latent_size, latent_size)

    def timestep_schedule(self, num_steps: int, latent_shape: tuple[int, ...]) -> dict:
        """Arguments of the scheduler's `set_timesteps` besides the number of steps."""
        return {}

    def denoise(self, denoiser, latents: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds,
                guidance_scale: float | None = None) -> torch.Tensor:
        """One denoiser call on a batch (CFG's two branches concatenated by the policy): the noise
        or velocity prediction, shaped like `latents`. `guidance_scale` is given to a model whose
        `guidance` is "embedded". `denoiser` may be a module or its bare `forward`."""
        raise NotImplementedError

    def combine_guidance(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        return uncond + scale * (cond - uncond)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images (B, C, H, W) in [0, 1] (videos (B, F, C, H, W)); here an `AutoencoderKL`'s."""
        return vae_decode(self.vae, latents)

    def save_lora(self, denoiser: nn.Module, dirpath: str | Path, state: dict | None = None) -> None:
        """`state`: the LoRA's state dict when the caller has gathered it (trainer=fsdp2), else read."""
        import diffusers.loaders

        save = save_unet_lora if self.lora_format == "unet" else save_transformer_lora
        save(denoiser, dirpath, getattr(diffusers.loaders, self.lora_loader), state or get_peft_model_state_dict(denoiser))


class PackedLatentsModel(DiffusionModel):
    """What FLUX.1 and Qwen-Image share: their transformers take 2x2 patches of the latents as a
    sequence (so a latent side must be even), and their schedules shift by FluxPipeline's `mu`,
    linear in that sequence's length between the scheduler config's base and max shifts. A
    subclass sets `scheduler_config` (its scheduler's config) and `title` (for the message)."""

    title = "this model"
    scheduler_config: dict

    def latent_shape(self, denoiser, batch: int, latent_size: int) -> tuple[int, ...]:
        if latent_size % 2:
            raise ValueError(f"policy.latent_size={latent_size} is invalid: {self.title} packs 2x2 latent patches, so "
                             "it must be even")
        return (batch, denoiser.config.in_channels // 4, latent_size, latent_size)

    def timestep_schedule(self, num_steps: int, latent_shape: tuple[int, ...]) -> dict:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        config = self.scheduler_config
        sequence_length = (latent_shape[-2] // 2) * (latent_shape[-1] // 2)
        mu = calculate_shift(sequence_length, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                             config.get("base_shift", 0.5), config.get("max_shift", 1.15))
        return {"sigmas": np.linspace(1.0, 1 / num_steps, num_steps), "mu": mu}


def guidance_input(guidance_embeds: bool, guidance_scale: float | None, batch: int, device) -> torch.Tensor | None:
    """A guidance-distilled transformer's `guidance` input (the scale, per sample), else None."""
    if not guidance_embeds:
        return None
    return torch.full((batch,), float(guidance_scale or 1.0), device=device, dtype=torch.float32)


def unet_denoise(denoiser, latents, timesteps, embeds: PromptEmbeds, **added_cond) -> torch.Tensor:
    """A UNet2DConditionModel's call: cross-attention on the tokens."""
    return denoiser(latents, timesteps, encoder_hidden_states=embeds.tokens, **added_cond).sample


def save_unet_lora(denoiser: nn.Module, dirpath, loader, state: dict) -> None:
    """A UNet's LoRA in diffusers' UNet key format, as `loader` (the pipeline's LoRA mixin,
    e.g. `StableDiffusionLoraLoaderMixin`) reads it, rank and alpha included."""
    from diffusers.utils import convert_state_dict_to_diffusers

    loader.save_lora_weights(
        dirpath, unet_lora_layers=convert_state_dict_to_diffusers(state),
        unet_lora_adapter_metadata=denoiser.peft_config["default"].to_dict(), safe_serialization=True,
    )


def save_transformer_lora(denoiser: nn.Module, dirpath, loader, state: dict) -> None:
    """A transformer's LoRA in peft's key format, as `loader` (SD3's, FLUX's LoRA mixin) reads it
    (and diffusers' own LoRA training scripts write it), rank and alpha included."""
    loader.save_lora_weights(
        dirpath, transformer_lora_layers=state,
        transformer_lora_adapter_metadata=denoiser.peft_config["default"].to_dict(), safe_serialization=True,
    )


def unnormalise_video_latents(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, F, H, W) in the VAE's input scale: times its per-channel `latents_std`, plus
    `latents_mean` (the video-style VAEs of Wan and Qwen-Image)."""
    config = vae.config
    mean = torch.tensor(config.latents_mean).view(1, config.z_dim, 1, 1, 1).to(latents.device, vae.dtype)
    std = torch.tensor(config.latents_std).view(1, config.z_dim, 1, 1, 1).to(latents.device, vae.dtype)
    return latents.to(vae.dtype) * std + mean


def vae_decode(vae: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1] through an `AutoencoderKL`: unscaled, unshifted (SD3's and
    FLUX's VAE have a shift as well as a scale; SD 1.x/2.x's shift is None)."""
    scaled = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", None) or 0.0)
    return ((vae.decode(scaled.to(vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)
