"""Stable Diffusion 3 / 3.5 through diffusers: the rectified-flow models Flow-GRPO fine-tunes.

`load_sd3` reads a `StableDiffusion3Pipeline` directory or hub id component by component with
diffusers'/transformers' own `from_pretrained` (the tests run it on a tiny pipeline they save).
Prompts are encoded by the pipeline's own `encode_prompt` (CLIP-L, CLIP-G and, optionally,
T5-XXL: SD3 runs without T5, whose 4.7B parameters are most of its text side). The frozen
parts are in the inference dtype; LoRA weights (added by `DiffusionPolicy` to the
transformer's attention projections) are float32.
"""


import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel
from rlft.models.loading import read_pipeline, vae_torch_dtype

COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
T5_COMPONENTS = ("text_encoder_3", "tokenizer_3")


class SD3Model(DiffusionModel):
    """Stable Diffusion 3/3.5. Prompts -> joint-attention tokens (B, 77 + L_t5, D) and pooled CLIP
    embeddings (B, P), exactly as `StableDiffusion3Pipeline.encode_prompt` makes them; the
    transformer takes the pooled ones as `pooled_projections`; the VAE has a shift as well as a
    scale; LoRA in the format `StableDiffusion3Pipeline.load_lora_weights` reads.

    The text encoders and the VAE are this module's submodules (so they move with the policy);
    the pipeline object that runs `encode_prompt` is a plain attribute, not a submodule, so the
    transformer it refers to (for its config alone) is not counted twice.
    """
    lora_loader = "SD3LoraLoaderMixin"
    lora_format = "transformer"

    def __init__(self, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer, vae,
                 text_encoder_3=None, tokenizer_3=None, max_sequence_length: int = 256):
        super().__init__()
        self.text_encoder, self.text_encoder_2, self.text_encoder_3 = text_encoder, text_encoder_2, text_encoder_3
        self.vae = vae
        self.max_sequence_length = max_sequence_length
        self.__dict__["pipeline"] = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=None, vae=None, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, _, pooled, _ = self.pipeline.encode_prompt(
            list(prompts), prompt_2=None, prompt_3=None, device=self.text_encoder.device,
            do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbeds(tokens, pooled)

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        return denoiser(hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds.tokens,
                        pooled_projections=embeds.pooled).sample


def load_sd3(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    use_t5: bool = True,
    max_sequence_length: int = 256,
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
    vae_dtype: str | None = None,
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the SD3 transformer), scheduler
    (flow matching, from the pipeline's config), model (`SD3Model`: CLIP-L + CLIP-G (+ T5), the
    VAE), base (its fingerprint). `vae_dtype`: the VAE's own dtype (null: `dtype`; flow_grpo and
    DiffusionNFT decode in float32)."""
    vae_torch = vae_torch_dtype(vae_dtype)  # checked before anything loads
    needed = COMPONENTS + (T5_COMPONENTS if use_t5 else ())
    no_t5 = lambda missing: " (or model.use_t5=false: SD3 runs without T5)" if set(missing) <= set(T5_COMPONENTS) else ""
    with read_pipeline("Stable Diffusion 3", "StableDiffusion3Pipeline", "model=sd3 (or sd35_medium, sd35_large)", needed,
                       pretrained, revision, variant, dtype, hint=no_t5) as read:
        f = read.files
        transformer = f.weights(SD3Transformer2DModel, "transformer")
        vae = f.frozen(AutoencoderKL, "vae", dtype=vae_torch)
        encoders = {name: f.frozen(CLIPTextModelWithProjection, name) for name in ("text_encoder", "text_encoder_2")}
        tokenizers = {name: f.files(CLIPTokenizer, name) for name in ("tokenizer", "tokenizer_2")}
        if use_t5:
            encoders["text_encoder_3"] = f.frozen(T5EncoderModel, "text_encoder_3")
            tokenizers["tokenizer_3"] = f.files(T5TokenizerFast, "tokenizer_3")
        scheduler = f.files(FlowMatchEulerDiscreteScheduler, "scheduler")
    model = SD3Model(**encoders, **tokenizers, transformer=transformer, vae=vae, max_sequence_length=max_sequence_length)
    return read.components(transformer, scheduler, model, gradient_checkpointing, vae_decode, use_t5=use_t5)
