"""reward=imagereward: ImageReward-v1.0 (Xu et al. 2023) as its own `ImageReward.score` computes it,
on transformers' BLIP classes (the `image-reward` package needs transformers 4.x internals):

    image tokens = BLIP ViT-L(image)                      (resize 224 bicubic, centre crop, CLIP's mean/std)
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
from safetensors.torch import load_file
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, BlipForImageTextRetrieval

from rlft.checks import MissingWeights
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
        pixels = self.processor(images=to_pil(images), return_tensors="pt")["pixel_values"].to(self.vision.dtype)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        text = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt")
        state = self.text(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                          encoder_hidden_states=image_tokens,
                          encoder_attention_mask=torch.ones(image_tokens.shape[:2], dtype=torch.long)).last_hidden_state
        return ((self.head(state[:, 0].float()) - self.mean) / self.std).squeeze(-1)
