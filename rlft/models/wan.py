"""Wan 2.1 text-to-video through diffusers: the video model DanceGRPO and Flow-GRPO fine-tune.

What Wan does its own way, all of it here (`WanModel`):
- latents are videos, (B, C, F', H', W') with F' = (num_frames - 1) / 4 + 1 latent frames and
  H' = H / 8, W' = W / 8; Flow-GRPO's SDE step and its log-probability are elementwise, so they
  apply to these unchanged;
- prompts are encoded by `WanPipeline.encode_prompt` itself (UMT5-XXL, each prompt's tokens
  then zeros up to `max_sequence_length`);
- the transformer takes the timestep as it is (0..1000); CFG is the usual two branches;
- sampled with `FlowMatchEulerDiscreteScheduler` at the pipeline's flow shift (its own
  scheduler, UniPC, is a multistep solver with no per-step Gaussian: Flow-GRPO's SDE step
  replaces it, as DanceGRPO's and Flow-GRPO's Wan training do);
- decoding un-normalises by the VAE's per-channel latent mean and std and returns frames,
  (B, F, C, H, W) in [0, 1]; an image reward scores each frame and averages
  (`rlft.rewards.frames`);
- LoRA in the format `WanPipeline.load_lora_weights` reads.
"""


import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel

from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel, unnormalise_video_latents
from rlft.models.loading import read_pipeline

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def check_num_frames(num_frames, temporal: int = 4) -> int:
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % temporal:
        raise ValueError(f"model.num_frames={num_frames} is invalid: the video VAE encodes 1 + {temporal}k frames "
                         f"(1, {1 + temporal}, {1 + 2 * temporal}, ..., 81)")
    return num_frames


class WanModel(DiffusionModel):
    lora_loader = "WanLoraLoaderMixin"
    lora_format = "transformer"

    def __init__(self, text_encoder, tokenizer, vae, num_frames: int = 81, height: int = 480, width: int = 832,
                 max_sequence_length: int = 512):
        super().__init__()
        self.text_encoder, self.vae = text_encoder, vae
        self.temporal, self.spatial = vae.config.scale_factor_temporal, vae.config.scale_factor_spatial
        self.num_frames = check_num_frames(num_frames, self.temporal)
        if height % (2 * self.spatial) or width % (2 * self.spatial):
            raise ValueError(f"model.height={height}, model.width={width} are invalid: each must be a multiple of "
                             f"{2 * self.spatial} (the VAE's downsampling times the transformer's 2x2 patches)")
        self.height, self.width = height, width
        self.max_sequence_length = max_sequence_length
        # encode_prompt's host, a plain attribute (not a submodule): the encoder is ours
        self.__dict__["pipeline"] = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=None,
                                                vae=None, scheduler=None)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        tokens, _ = self.pipeline.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                                max_sequence_length=self.max_sequence_length,
                                                device=self.text_encoder.device)
        return PromptEmbeds(tokens)

    def default_latent_size(self, denoiser) -> tuple[int, int]:
        return (self.height // self.spatial, self.width // self.spatial)

    def latent_shape(self, denoiser, batch: int, latent_size) -> tuple[int, ...]:
        height, width = (latent_size, latent_size) if isinstance(latent_size, int) else latent_size
        frames = (self.num_frames - 1) // self.temporal + 1
        return (batch, denoiser.config.in_channels, frames, height, width)

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        return denoiser(hidden_states=latents, timestep=timesteps, encoder_hidden_states=embeds.tokens, return_dict=False)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, F', H', W') -> frames (B, F, 3, H, W) in [0, 1]."""
        video = self.vae.decode(unnormalise_video_latents(self.vae, latents), return_dict=False)[0]  # (B, 3, F, H, W)
        return ((video.float() + 1) / 2).clamp(0, 1).permute(0, 2, 1, 3, 4)


def load_wan(
    pretrained: str,
    revision: str | None = None,
    variant: str | None = None,
    dtype: str = "bfloat16",
    num_frames: int = 81,
    height: int = 480,
    width: int = 832,
    flow_shift: float | None = None,
    max_sequence_length: int = 512,
    gradient_checkpointing: bool = False,
    vae_decode: str = "whole",
) -> dict:
    """-> the components `DiffusionPolicy` takes: denoiser (the Wan transformer), scheduler (flow
    matching at the pipeline's flow shift, or `flow_shift`), model (`WanModel`), base."""
    check_num_frames(num_frames)  # before anything is read
    with read_pipeline("Wan", "WanPipeline", "model=wan21_t2v_1_3b", COMPONENTS, pretrained, revision, variant, dtype) as read:
        f = read.files
        transformer = f.weights(WanTransformer3DModel, "transformer")
        # The VAE in float32, as WanPipeline's examples load it (its 3D convolutions lose detail in 16 bits).
        vae = f.frozen(AutoencoderKLWan, "vae", dtype=torch.float32)
        text_encoder, tokenizer = f.frozen(UMT5EncoderModel, "text_encoder"), f.files(AutoTokenizer, "tokenizer")
        scheduler_config = f.config(FlowMatchEulerDiscreteScheduler, "scheduler")
    shift = flow_shift if flow_shift is not None else scheduler_config.get("flow_shift", scheduler_config.get("shift", 3.0))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=scheduler_config.get("num_train_timesteps", 1000),
                                                shift=shift)
    model = WanModel(text_encoder, tokenizer, vae, num_frames=num_frames, height=height, width=width,
                     max_sequence_length=max_sequence_length)
    return read.components(transformer, scheduler, model, gradient_checkpointing, vae_decode)
