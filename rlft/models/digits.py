"""The embedded default: a ~1M-parameter text-conditioned UNet on 16x16 digits (its family:
`DigitsModel`, pixel space, a word-level prompt encoder), and a digit classifier that serves as
a reward and (for SEIKO) a feature backbone.

Sizes follow DESIGN.md: at 16x16 with channels 32/64 a training batch of 64 takes about
0.2-0.4 s on 2 CPU cores, and sampling 40 images with CFG and 20 DDIM steps a few seconds,
so an RL epoch fits in seconds.
"""

import torch
import diffusers
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from rlft.checks import MissingWeights
from rlft.data.digits import vocabulary
from rlft.types import PromptEmbeds
from rlft.models.base import DiffusionModel, unet_denoise
from rlft.models.prompt_encoder import WordPromptEncoder


class DigitsModel(DiffusionModel):
    """The embedded models' family: a UNet in pixel space (no VAE: images are the latents, in
    [-1, 1]) conditioned by cross-attention on a word-level prompt encoder; its LoRA in
    Stable Diffusion's UNet format."""

    text_encoders = ("prompt_encoder",)

    def __init__(self, prompt_encoder: WordPromptEncoder):
        super().__init__()
        self.prompt_encoder = prompt_encoder

    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        return PromptEmbeds(self.prompt_encoder.encode(prompts))

    def check_prompts(self, prompts: list[str]) -> None:
        self.prompt_encoder.tokenize(list(prompts))  # a word outside the vocabulary is refused by name

    def denoise(self, denoiser, latents, timesteps, embeds, guidance_scale=None):
        return unet_denoise(denoiser, latents, timesteps, embeds)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((latents + 1) / 2).clamp(0, 1)


def build_digits_unet(image_size: int = 16, embed_dim: int = 32) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=embed_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_digits_scheduler() -> DDIMScheduler:
    # Cosine schedule: better than linear at low resolution (Nichol & Dhariwal 2021).
    # set_alpha_to_one=False, as Stable Diffusion's,
    # and steps_offset=1 keeps every step of a trajectory stochastic, so each has a finite
    # log-probability (with steps_offset=0 the last step, t=0 -> alphas_cumprod[0], is not).
    return DDIMScheduler(
        steps_offset=1,
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
    )


def build_digits_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    # Rectified flow (x_sigma = (1 - sigma) x0 + sigma noise, velocity noise - x0), as SD3/FLUX.
    # shift=1: no resolution shift at 16x16 (SD3 shifts by 3 at 1024x1024).
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def build_digits_prompt_encoder(embed_dim: int = 32) -> WordPromptEncoder:
    return WordPromptEncoder(vocab=vocabulary(), embed_dim=embed_dim, max_length=4)


class DigitClassifier(ModelMixin, ConfigMixin):
    """Small CNN: images (B, 1, H, W) in [0, 1] -> logits (B, 10).

    `features` (B, feature_dim) is the penultimate layer, a frozen backbone for reward heads.
    """

    @register_to_config
    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * channels),
            nn.SiLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, 2 * channels),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * channels, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images * 2 - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_digits_model(path: str) -> dict:
    """Load the components of a digits model directory (unet/, scheduler/, text_encoder/)
    through diffusers' `from_pretrained`, the same path as any other model directory. The
    scheduler's class comes from its saved config: DDIM (model=digits) or flow matching
    (model=digits_flow), and with it the sampler step the policy uses."""
    from pathlib import Path

    from rlft.models.fingerprint import base_fingerprint

    parts = ("unet", "scheduler", "text_encoder")
    missing = [sub for sub in parts if not (Path(path) / sub).is_dir()]
    if missing:
        raise MissingWeights(
            f"{path!r} is not a digits model directory: missing {missing} "
            "(expected unet/, scheduler/ and text_encoder/ as written by `python -m rlft.pretrain`)"
        )
    return {
        "denoiser": UNet2DConditionModel.from_pretrained(path, subfolder="unet"),
        "scheduler": load_scheduler(path),
        "model": DigitsModel(WordPromptEncoder.from_pretrained(path, subfolder="text_encoder")),
        "base": base_fingerprint(path, parts, dtype="float32"),
    }


def load_scheduler(path: str, subfolder: str = "scheduler", **kwargs):
    """The scheduler a model directory names (`_class_name` in its scheduler config)."""
    config = DDIMScheduler.load_config(path, subfolder=subfolder, **kwargs)
    return getattr(diffusers, config["_class_name"]).from_config(config)
