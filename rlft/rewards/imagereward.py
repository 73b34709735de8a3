"""reward=imagereward: ImageReward-v1.0 (Xu et al. 2023) as its own `ImageReward.score` computes it,
on transformers' BLIP classes (the `image-reward` package needs transformers 4.x internals):

    image tokens = BLIP ViT-L(image)                      (resize 224 bicubic, centre crop as torchvision's, CLIP's mean/std)
    text state   = BLIP's BERT(prompt, cross-attending to the image tokens), at its first token
                   (the prompt padded and truncated to 35 tokens, [CLS] first)
    reward       = (MLP(text state) - 0.16717362830052426) / 1.0333394966054072

The MLP (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between that evaluation skips) and the
normalisation are ImageReward's. The weights are converted once from `ImageReward.pt` (hub
repository `THUDM/ImageReward`): `python -m rlft.rewards.convert imagereward ...` writes the directory
`model_path` names (rlft.rewards.convert). flow_grpo's `imagereward_scorer.py` calls the same
`score`; the papers report it as is (about -2 to 2, the mean of human-preferred images near 0.2).
"""

import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

from rlft.checks import MissingWeights
from rlft.rewards.aesthetic import resize_and_crop_box
from rlft.rewards.clip_similarity import to_pil

IMAGEREWARD_MEAN = 0.16717362830052426  # ImageReward.py's self.mean, self.std
IMAGEREWARD_STD = 1.0333394966054072
MAX_LENGTH = 35  # the prompt's tokens, padded and truncated to this


class ImageRewardHead(nn.Module):
    """ImageReward's MLP (its `mlp.layers`; the dropouts are identities in evaluation)."""

    def __init__(self, width: int = 768):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def resize_and_crop(image: Image.Image, size: int) -> Image.Image:
    """ImageReward's `Resize(size, BICUBIC)` and `CenterCrop(size)` (torchvision, on a PIL image):
    the shorter side to `size`, the longer to `int(size * long / short)`, then the centre square with
    its offsets rounded, `int(round((side - size) / 2))`. transformers' processor floors the offset,
    so some sizes (448 x 454: 224 x 227 after the resize) would crop one pixel apart."""
    new_h, new_w, top, left = resize_and_crop_box(image.height, image.width, size)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC)
    return image.crop((left, top, left + size, top + size))


class ImageReward:
    """(images, prompts) -> ImageReward-v1.0's score (B,)."""

    def __init__(self, model_path: str, dtype: str = "float32"):
        directory = Path(model_path)
        if not (directory / "imagereward_head.safetensors").is_file():
            raise MissingWeights(f"reward.model_path={model_path!r} is not a converted ImageReward directory (no "
                                    f"imagereward_head.safetensors): write one with `python -m rlft.rewards.convert "
                                    f"imagereward ImageReward.pt --config Salesforce/blip-itm-large-coco --out DIR`")
        blip = BlipForImageTextRetrieval.from_pretrained(model_path, dtype=getattr(torch, dtype)).requires_grad_(False).eval()
        self.vision, self.text = blip.vision_model, blip.text_encoder
        head = load_file(str(directory / "imagereward_head.safetensors"))
        self.head = ImageRewardHead(head["layers.0.weight"].shape[1]).eval()
        self.head.load_state_dict(head)
        settings = json.loads((directory / "imagereward.json").read_text())
        self.mean, self.std, self.max_length = settings["mean"], settings["std"], settings["max_length"]
        self.processor, self.tokenizer = AutoImageProcessor.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        size = self.processor.crop_size["height"]
        cropped = [resize_and_crop(image, size) for image in to_pil(images)]
        device = self.vision.device  # where the module's placement put it (rlft.rewards.placement)
        pixels = self.processor(images=cropped, do_resize=False, do_center_crop=False,
                                return_tensors="pt")["pixel_values"].to(device, self.vision.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt").to(device)
        state = self.text(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                          encoder_hidden_states=image_tokens,
                          encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long, device=device)).last_hidden_state
        head = self.head.layers[0].weight
        return ((self.head(state[:, 0].to(head.dtype)).float() - self.mean) / self.std).squeeze(-1).cpu()
