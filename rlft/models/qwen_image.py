"""Qwen-Image through diffusers: a 20B rectified-flow MMDiT conditioned by a Qwen2.5-VL.

What Qwen-Image does its own way, all of it here (`QwenImageModel`):
- prompts are encoded by `QwenImagePipeline.encode_prompt` itself: the pipeline's prompt
  template around each prompt, Qwen2.5-VL's last hidden states with the template's first 34
  tokens dropped, each prompt keeping its own length with an attention mask (rlft pads a batch
  to its longest prompt, the mask leaving the padding out: `PromptEmbeds.cat`);
- packed 2x2 latents (as FLUX) with `img_shapes`, the mask as `encoder_hidden_states_mask`,
  the transformer fed `timestep / 1000`; the schedule shifted by `mu` as FLUX's;
- true classifier-free guidance with the pipeline's norm rescaling: the combined prediction is
  rescaled, per packed token, to the norm of the conditional one;
- a video-style VAE (a frame axis of 1) with per-channel latent mean and std;
- LoRA in the format `QwenImagePipeline.load_lora_weights` reads.
"""


import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from rlft.types import PromptEmbeds
from rlft.models.base import PackedLatentsModel, guidance_input, unnormalise_video_latents
from rlft.models.loading import read_pipeline

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C), QwenImagePipeline._pack_latents."""
    batch, channels, height, width = latents.shape
    return QwenImagePipeline._pack_latents(latents, batch, channels, height, width)


def unpack(packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` (the pipeline's _unpack_latents at a latent's own size, frame axis dropped)."""
    return QwenImagePipeline._unpack_latents(packed, height, width, 1)[:, :, 0]


class QwenImageModel(PackedLatentsModel):
    lora_loader = "QwenImageLoraLoaderMixin"
    lora_format = "transformer"
    title = "Qwen-Image"
    text_encoders = ("text_encoder",)

    def __init__(self, text_encoder, tokenizer, vae, scheduler, guidance_embeds: bool = False,
                 max_sequence_length: int = 512):
        super().__init__()
        self.text_encoder, self.vae = text_encoder, vae
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = guidance_embeds
        self.guidance = "embedded" if guidance_embeds else "cfg"
        self.scheduler_config = dict(scheduler.config)
        self.vae_scale_factor = 2 ** len(vae.temperal_downsample)
        # encode_prompt's host, a plain attribute (not a submodule): the encoder is ours
        self.__dict__["pipeline"] = QwenImagePipeline(transformer=None, vae=None, scheduler=None,
                                                      text_encoder=text_encoder, tokenizer=tokenizer)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, mask = self.pipeline.encode_prompt(list(prompts), device=self.text_encoder.device,
                                                   max_sequence_length=self.max_sequence_length)
        if mask is None:  # the pipeline drops a mask of all ones; rlft keeps one, to batch prompts of other lengths
            mask = torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device)
        return PromptEmbeds(tokens, mask=mask)

    def default_latent_size(self, denoiser) -> int:
        return 1024 // self.vae_scale_factor  # 1024x1024 images, the pipeline's default

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        batch, _, height, width = latents.shape
        guidance = guidance_input(self.guidance_embeds, guidance_scale, batch, latents.device)
        out = denoiser(hidden_states=pack(latents), timestep=timesteps.to(latents.dtype) / 1000, guidance=guidance,
                       encoder_hidden_states_mask=None if embeds.mask.all() else embeds.mask,  # as the pipeline passes it
                       encoder_hidden_states=embeds.tokens,
                       img_shapes=[[(1, height // 2, width // 2)]] * batch, return_dict=False)[0]
        return unpack(out, height, width)

    def combine_guidance(self, uncond, cond, scale):
        """QwenImagePipeline's true CFG: the guided prediction rescaled, per packed token, to the
        conditional prediction's norm."""
        height, width = cond.shape[-2:]
        combined, cond = pack(uncond + scale * (cond - uncond)), pack(cond)
        rescaled = combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
        return unpack(rescaled, height, width)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = unnormalise_video_latents(self.vae, latents[:, :, None])  # a frame axis of 1
        return ((self.vae.decode(frames, return_dict=False)[0][:, :, 0].float() + 1) / 2).clamp(0, 1)


def load_qwen_image(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    max_sequence_length: int = 512,
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the Qwen-Image transformer), scheduler,
    model (`QwenImageModel`: Qwen2.5-VL, the VAE), base (its fingerprint)."""
    with read_pipeline("Qwen-Image", "QwenImagePipeline", "model=qwen_image", COMPONENTS,
                       pretrained, revision, variant, dtype) as read:
        f = read.files
        transformer = f.weights(QwenImageTransformer2DModel, "transformer")
        vae = f.frozen(AutoencoderKLQwenImage, "vae")
        text_encoder = f.frozen(Qwen2_5_VLForConditionalGeneration, "text_encoder")
        tokenizer = f.files(AutoTokenizer, "tokenizer")
        scheduler = f.files(FlowMatchEulerDiscreteScheduler, "scheduler")
    model = QwenImageModel(text_encoder, tokenizer, vae, scheduler, guidance_embeds=bool(transformer.config.guidance_embeds),
                           max_sequence_length=max_sequence_length)
    return read.components(transformer, scheduler, model, gradient_checkpointing, vae_decode)
