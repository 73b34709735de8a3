"""Rewards that compare an image with its prompt through a CLIP pair: PickScore and CLIPScore,
computed as the public scorers compute them.

    score = logit_scale.exp() * cos(image embedding, text embedding) / divisor    (HPSv2: cos / divisor)

- `reward=pickscore`: `yuvalkirstain/PickScore_v1` with the processor of
  `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`, text padded and truncated to 77 tokens (flow_grpo's
  `pickscore_scorer.py`, the PickScore repository's own example); flow_grpo trains on it
  divided by 26 (`reward.divisor=26`), its tables report it undivided.
- `reward=clipscore`: `openai/clip-vit-large-patch14` (logit_scale.exp() = 100), divided by 100
  as flow_grpo's and DiffusionNFT's `clip_scorer.py` do (`logits_per_image.diagonal() / 100`):
  the cosine similarity.
- `reward=hpsv2`: HPSv2.1, an open_clip ViT-H-14 fine-tuned on human preferences, converted into
  a CLIPModel (`python -m rlft.rewards.convert`); its score is the cosine alone
  (`use_logit_scale=false`: flow_grpo's `hpsv2_scorer.py` takes `image_features @ text_features.T`
  of the normalised features), through the processor of `laion/CLIP-ViT-H-14-laion2B-s32B-b79K`,
  whose resize, centre crop and normalisation are those of open_clip's validation transform.

By default (`preprocess=processor`) the images go through the model's own image processor as 8-bit
PIL images, as flow_grpo's scorers (and DiffusionNFT's PickScore) receive them, so the numbers
compare with the papers'. `preprocess=tensor` takes the float images as DiffusionNFT's CLIPScore and
HPSv2 scorers do, through torchvision's transforms written in torch (`rlft.rewards.aesthetic.
tensor_preprocess`: `resize` bicubic or bilinear, antialiased; `fit` crop (CLIP's Resize + CenterCrop)
or pad (HPSv2's ResizeMaxSize)), with no 8-bit rounding. `differentiable=true` uses that path too, so
that gradients reach the images (SEIKO's reward backpropagation).
"""

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoProcessor

from rlft.checks import as_config_error
from rlft.rewards.aesthetic import FITS, RESIZE_FILTERS, ClipImageFeatures, shared_clip

PREPROCESS = ("processor", "tensor")


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, C, H, W) in [0, 1] -> 8-bit RGB images, as a pipeline's output."""
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    return [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]


def check_preprocess(preprocess: str, resize: str, fit: str, differentiable: bool, where: str = "reward") -> bool:
    """The image path's settings; -> whether the images are preprocessed in torch."""
    for key, value, valid in (("preprocess", preprocess, PREPROCESS), ("resize", resize, RESIZE_FILTERS), ("fit", fit, FITS)):
        if value not in valid:
            raise ValueError(f"{where}.{key}={value!r} is invalid: must be one of {list(valid)}")
    tensor = preprocess == "tensor" or differentiable
    if not tensor and (resize, fit) != ("bicubic", "crop"):
        raise ValueError(f"{where}.resize={resize!r}, {where}.fit={fit!r} are invalid with {where}.preprocess=processor "
                         f"(the processor's own transform applies): set {where}.preprocess=tensor")
    return tensor


class ClipSimilarity(nn.Module):
    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        with as_config_error():
            check_preprocess(node.get("preprocess", "processor"), node.get("resize", "bicubic"), node.get("fit", "crop"),
                             node.get("differentiable", False), where)

    def __init__(self, model_path: str, processor_path: str | None = None, divisor: float = 1.0,
                 differentiable: bool = False, dtype: str = "float32", max_length: int = 77,
                 use_logit_scale: bool = True, preprocess: str = "processor", resize: str = "bicubic", fit: str = "crop"):
        super().__init__()
        if divisor <= 0:
            raise ValueError(f"reward.divisor={divisor} is invalid: must be > 0")
        tensor = check_preprocess(preprocess, resize, fit, differentiable)
        processor_path = processor_path or model_path
        self.clip = shared_clip(model_path, dtype)
        self.processor = AutoProcessor.from_pretrained(processor_path)
        self.divisor, self.max_length, self.differentiable = divisor, max_length, differentiable
        self.use_logit_scale = use_logit_scale
        # The torch preprocessing reads the processor's settings; it shares this CLIP (shared_clip).
        self.resize, self.fit = resize, fit
        self.torch_features = ClipImageFeatures(model_path, dtype, processor_path=processor_path) if tensor else None

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        if self.torch_features is not None:
            return self.torch_features.features(images, self.resize, self.fit)
        inputs = self.processor(images=to_pil(images), return_tensors="pt")
        features = self.clip.get_image_features(pixel_values=inputs["pixel_values"].to(self.clip.device, self.clip.dtype))
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        return F.normalize(features.float(), dim=-1)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=list(prompts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.clip.device)
        features = self.clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        if not isinstance(features, torch.Tensor):
            features = features.pooler_output
        return F.normalize(features.float(), dim=-1)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
            cosine = (self.image_embeddings(images) * self.text_embeddings(prompts)).sum(dim=-1)
            scale = self.clip.logit_scale.exp().float() if self.use_logit_scale else 1.0
            return scale * cosine / self.divisor
