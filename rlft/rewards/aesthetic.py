"""The LAION aesthetic score, as DDPO uses it: an MLP on L2-normalised CLIP ViT-L/14 image
embeddings (`sac+logos+ava1-l14-linearMSE.pth`). Differentiable in the images, so SEIKO can
backpropagate through it, and its CLIP features serve as SEIKO's ensemble backbone."""

import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPModel
from transformers.image_processing_utils import ImageProcessingMixin

from rlft.checks import MissingWeights


class AestheticMLP(nn.Module):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1, the improved-aesthetic-predictor layout (its
    state dict keys are `layers.N.weight`); dropout is inactive in eval mode."""

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


# One CLIP per (model, dtype) in a process: the aesthetic reward, the evaluation's reward
# instance and SEIKO's ensemble backbone name the same model, and at ViT-L/14 size (1.7 GB in
# float32) each copy counts. All three keep it frozen, so sharing it changes no number.
_LOADED_CLIPS: "weakref.WeakValueDictionary[tuple[str, str], CLIPModel]" = weakref.WeakValueDictionary()


def shared_clip(clip_path: str, dtype: str) -> CLIPModel:
    key = (str(clip_path), dtype)
    clip = _LOADED_CLIPS.get(key)
    if clip is None:
        clip = CLIPModel.from_pretrained(clip_path, dtype=getattr(torch, dtype)).requires_grad_(False).eval()
        _LOADED_CLIPS[key] = clip
    return clip


class ClipImageFeatures(nn.Module):
    """Images (B, C, H, W) in [0, 1] -> L2-normalised CLIP image embeddings (B, D), with
    CLIP's preprocessing (resize, centre crop, normalise) written in torch so that gradients
    flow to the images."""

    def __init__(self, clip_path: str, dtype: str = "float32", processor_path: str | None = None):
        super().__init__()
        self.clip = shared_clip(clip_path, dtype)
        # The processor's settings only (its own PIL pipeline is not differentiable); `processor_path`
        # when the model's directory has none (PickScore's processor is that of CLIP-ViT-H-14).
        processor, _ = ImageProcessingMixin.get_image_processor_dict(processor_path or clip_path)
        size = processor["crop_size"]
        self.size = int(size if isinstance(size, int) else size["height"])
        self.register_buffer("mean", torch.tensor(processor["image_mean"]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(processor["image_std"]).view(1, -1, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return self.clip.config.projection_dim

    def features(self, images: torch.Tensor, resize: str = "bicubic", fit: str = "crop") -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = images.to(self.mean.device).float()
        pixels = ((tensor_preprocess(images, self.size, resize, fit) - self.mean) / self.std).to(self.clip.dtype)
        embeddings = self.clip.get_image_features(pixel_values=pixels)
        if not isinstance(embeddings, torch.Tensor):  # a model output in some transformers versions
            embeddings = embeddings.pooler_output
        return F.normalize(embeddings.float(), dim=-1)


def resize_and_crop_box(h: int, w: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's `Resize(size)` then `CenterCrop(size)` on an H x W image: the resized
    (height, width), the shorter side `size` and the longer `int(size * long / short)`, and the
    crop's (top, left), rounded as CenterCrop rounds them, `int(round((side - size) / 2))`.
    Shared by the tensor path below and ImageReward's PIL path."""
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_h, new_w = (new_long, size) if w <= h else (size, new_long)
    return new_h, new_w, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


RESIZE_FILTERS = ("bicubic", "bilinear")
FITS = ("crop", "pad")


def tensor_preprocess(images: torch.Tensor, size: int, resize: str = "bicubic", fit: str = "crop") -> torch.Tensor:
    """Float images (B, C, H, W) -> (B, C, size, size), as torchvision transforms the tensors that
    DiffusionNFT's scorers take (no 8-bit rounding; antialiased like torchvision's tensor resize):
    - `fit=crop`: `Resize(size)` (shorter side to `size`, the longer `int(size * long / short)`), then
      `CenterCrop(size)` (its offsets rounded, `int(round((H - size) / 2))`): CLIP's transform;
    - `fit=pad`: HPSv2's `ResizeMaxSize(size)`: the longer side to `size` (each side `round(side *
      scale)`), then zeros padded around it to a square (`pad // 2` before, the rest after)."""
    h, w = images.shape[-2:]
    if fit == "crop":
        new_h, new_w, top, left = resize_and_crop_box(h, w, size)
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode=resize, align_corners=False, antialias=True)
        return images[..., top : top + size, left : left + size]
    scale = size / float(max(h, w))
    if scale == 1.0:
        return images
    new_h, new_w = round(h * scale), round(w * scale)
    images = F.interpolate(images, size=(new_h, new_w), mode=resize, align_corners=False, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    return F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)


class AestheticScore(nn.Module):
    """reward = MLP(normalised CLIP embedding). `head_path`: the predictor's state dict."""

    def __init__(self, clip_path: str, head_path: str, dtype: str = "float32"):
        super().__init__()
        self.backbone = ClipImageFeatures(clip_path, dtype)
        if not Path(head_path).is_file():
            raise MissingWeights(f"reward.head_path={head_path!r}: no such file (the aesthetic predictor's weights, "
                                    f"e.g. sac+logos+ava1-l14-linearMSE.pth)")
        state = torch.load(head_path, map_location="cpu", weights_only=True)
        self.head = AestheticMLP(self.backbone.dim)
        expected = {k: tuple(v.shape) for k, v in self.head.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if found != expected:
            raise ValueError(
                f"reward.head_path={head_path!r} does not fit reward.clip_path={clip_path!r}: the head has "
                f"{found}, but an aesthetic MLP on this CLIP's {self.backbone.dim}-d embeddings has {expected}"
            )
        self.head.load_state_dict(state)
        self.requires_grad_(False).eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """SEIKO's ensemble backbone: the same normalised CLIP embeddings."""
        return self.backbone.features(images)

    def forward(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        weight = next(self.head.parameters())  # its device and dtype: where the module placed it
        return self.head(self.features(images.to(weight.device)).to(weight.dtype)).squeeze(-1).float()
