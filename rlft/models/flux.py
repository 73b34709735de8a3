"""FLUX.1 through diffusers: the rectified-flow transformer that Flow-GRPO, DanceGRPO and
MixGRPO fine-tune.

What FLUX does its own way, all of it here (`FluxModel`):
- the transformer takes *packed* latents, 2x2 patches flattened to a sequence
  (`FluxPipeline._pack_latents`), with positional `img_ids` for that sequence and `txt_ids`
  (zeros) for the T5 tokens; the policy keeps latents unpacked, (B, C, H, W), and `denoise`
  packs on the way in and unpacks on the way out, so noise, steps and log-probabilities are
  those of the unpacked tensor (the same elements, so `mean` and `sum` reduce the same);
- FLUX.1-dev is guidance-distilled: the guidance scale is an input (`guidance`, a guidance
  embedding), not two batched branches; FLUX.1-schnell has no guidance embedding;
- its scheduler shifts the timesteps by `mu`, computed from the latent sequence length
  (`calculate_shift`), over sigmas `linspace(1, 1/num_steps, num_steps)`, as `FluxPipeline`;
- the transformer is fed `timestep / 1000`;
- prompts are encoded by `FluxPipeline.encode_prompt` itself (CLIP-L pooled, T5-XXL tokens);
- the VAE has a shift as well as a scale; LoRA in the format `FluxPipeline.load_lora_weights` reads.
"""


import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from rlft.types import PromptEmbeds
from rlft.models.base import PackedLatentsModel, guidance_input
from rlft.models.loading import read_pipeline

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


class FluxModel(PackedLatentsModel):
    """FLUX.1's ways (see the module's docstring). `guidance_embeds`: the transformer's config
    flag (dev: true; schnell: false), read once at load."""
    lora_loader = "FluxLoraLoaderMixin"
    lora_format = "transformer"

    title = "FLUX"

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae, scheduler, guidance_embeds: bool,
                 max_sequence_length: int = 512):
        super().__init__()
        self.text_encoder, self.text_encoder_2, self.vae = text_encoder, text_encoder_2, vae
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = guidance_embeds
        self.guidance = "embedded" if guidance_embeds else "cfg"
        self.scheduler_config = dict(scheduler.config)
        # encode_prompt's host, a plain attribute (not a submodule): the encoders are ours
        self.__dict__["pipeline"] = FluxPipeline(
            transformer=None, scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, pooled, _ = self.pipeline.encode_prompt(
            list(prompts), prompt_2=None, device=self.text_encoder.device, max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(tokens, pooled)

    def default_latent_size(self, denoiser) -> int:
        """The VAE's image size over its downsampling: 1024 / 8 = 128 for FLUX.1 (FluxPipeline's default)."""
        return self.vae.config.sample_size // 2 ** (len(self.vae.config.block_out_channels) - 1)

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        batch, channels, height, width = latents.shape
        packed = FluxPipeline._pack_latents(latents, batch, channels, height, width)
        img_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latents.device, latents.dtype)
        txt_ids = torch.zeros(embeds.tokens.shape[1], 3, device=latents.device, dtype=latents.dtype)
        guidance = guidance_input(self.guidance_embeds, guidance_scale, batch, latents.device)
        out = denoiser(hidden_states=packed, timestep=timesteps.to(latents.dtype) / 1000, guidance=guidance,
                       pooled_projections=embeds.pooled, encoder_hidden_states=embeds.tokens, txt_ids=txt_ids,
                       img_ids=img_ids, return_dict=False)[0]
        # _unpack_latents takes the image size; at vae_scale_factor 1 the latent size is that.
        return FluxPipeline._unpack_latents(out, height, width, 1)


def load_flux(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    max_sequence_length: int = 512,
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the FLUX transformer), scheduler
    (flow matching with dynamic shift, from the pipeline's config), model (`FluxModel`: CLIP-L,
    T5-XXL, the VAE), base (its fingerprint)."""
    with read_pipeline("FLUX.1", "FluxPipeline", "model=flux_dev (or flux_schnell)", COMPONENTS,
                       pretrained, revision, variant, dtype) as read:
        f = read.files
        transformer = f.weights(FluxTransformer2DModel, "transformer")
        vae = f.frozen(AutoencoderKL, "vae")
        text_encoder, text_encoder_2 = f.frozen(CLIPTextModel, "text_encoder"), f.frozen(T5EncoderModel, "text_encoder_2")
        tokenizer, tokenizer_2 = f.files(CLIPTokenizer, "tokenizer"), f.files(T5TokenizerFast, "tokenizer_2")
        scheduler = f.files(FlowMatchEulerDiscreteScheduler, "scheduler")
    model = FluxModel(text_encoder, tokenizer, text_encoder_2, tokenizer_2, vae, scheduler,
                      guidance_embeds=bool(transformer.config.guidance_embeds), max_sequence_length=max_sequence_length)
    return read.components(transformer, scheduler, model, gradient_checkpointing, vae_decode)
