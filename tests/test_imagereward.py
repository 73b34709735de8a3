"""ImageReward without the image-reward package: the converter (rlft.rewards.convert) maps BLIP's
original key names (written out here from BLIP's vit.py and med.py) onto transformers' BLIP and
back, refuses what it does not know, writes a directory through the command line, and
reward=imagereward scores what transformers' BLIP forward, ImageReward's MLP written out here and
its normalisation compute on ImageReward's own preprocessing (also written out here)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, BlipConfig, BlipForImageTextRetrieval, BlipTextConfig, BlipVisionConfig

from rlft.rewards.clip_similarity import to_pil
from rlft.rewards.convert import hf_to_imagereward, imagereward_to_hf
from rlft.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, ImageReward, ImageRewardHead

WORDS = ["a", "photo", "of", "cat", "dog", "red", "on", "the", "table"]
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def save_tiny_blip_config(path):
    """A BLIP of ImageReward's layout at toy width (1 layer each, 32x32 images in 8x8 patches) with
    a BERT WordPiece tokenizer of a few words: the `--config` of a conversion."""
    config = BlipConfig(
        vision_config=BlipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=48, patch_size=8).to_dict(),
        text_config=BlipTextConfig(vocab_size=len(WORDS) + 5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, encoder_hidden_size=16, max_position_embeddings=40).to_dict())
    BlipForImageTextRetrieval(config).save_pretrained(path)
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer, backend.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]").save_pretrained(path)
    return path


def original_keys(layers: int = 1) -> set[str]:
    """ImageReward.pt's key names: BLIP's VisionTransformer (timm's layout) and med.py's BERT with
    cross-attention under `blip.`, the MLP under `mlp.layers`."""
    vision = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(layers):
        vision |= {f"blocks.{i}.{m}.{k}" for m in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
                   for k in ("weight", "bias")}
    text = {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight", "embeddings.LayerNorm.weight",
            "embeddings.LayerNorm.bias"}
    for i in range(layers):
        for part in ("attention", "crossattention"):
            text |= {f"encoder.layer.{i}.{part}.self.{m}.{k}" for m in ("query", "key", "value") for k in ("weight", "bias")}
            text |= {f"encoder.layer.{i}.{part}.output.{m}.{k}" for m in ("dense", "LayerNorm") for k in ("weight", "bias")}
        text |= {f"encoder.layer.{i}.{m}.{k}" for m in ("intermediate.dense", "output.dense", "output.LayerNorm")
                 for k in ("weight", "bias")}
    head = {f"mlp.layers.{i}.{k}" for i in (0, 2, 4, 6, 7) for k in ("weight", "bias")}
    return {f"blip.visual_encoder.{k}" for k in vision} | {f"blip.text_encoder.{k}" for k in text} | head


def imagereward_checkpoint(config_dir, seed: int = 0) -> dict[str, torch.Tensor]:
    """An ImageReward.pt-layout state dict of random weights (image size 32: 16 patches, not the config's)."""
    torch.manual_seed(seed)
    cfg = BlipConfig.from_pretrained(config_dir)
    cfg.vision_config.image_size = 32
    model = BlipForImageTextRetrieval(cfg)
    with torch.no_grad():  # every weight random (BLIP's vision init is 1e-10: the image would not matter)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower() or p.ndim < 2:
                p.normal_(0, 0.5)
            else:
                p.normal_(0, p[0].numel() ** -0.5 * (4 if "crossattention.self" in name else 1))
    blip = {k: v for k, v in model.state_dict().items() if not k.startswith(("vision_proj", "text_proj", "itm_head"))}
    return hf_to_imagereward(blip, ImageRewardHead(16).state_dict())


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagereward")
    config = save_tiny_blip_config(root / "blip")
    state = imagereward_checkpoint(config)
    torch.save(state, root / "ImageReward.pt")
    result = subprocess.run([sys.executable, "-m", "rlft.rewards.convert", "imagereward", str(root / "ImageReward.pt"),
                             "--config", str(config), "--out", str(root / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return root / "out", state


def test_the_key_mapping_is_blips_and_round_trips():
    config = BlipConfig(vision_config=BlipVisionConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8,
                                                       num_attention_heads=2, image_size=16, patch_size=8).to_dict(),
                        text_config=BlipTextConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8, vocab_size=10,
                                                   num_attention_heads=2, encoder_hidden_size=8).to_dict())
    blip = {k: v for k, v in BlipForImageTextRetrieval(config).state_dict().items()
            if not k.startswith(("vision_proj", "text_proj", "itm_head")) and not k.endswith("position_ids")}
    head = ImageRewardHead(8).state_dict()
    original = hf_to_imagereward(blip, head)
    assert set(original) == original_keys()
    back_blip, back_head = imagereward_to_hf({"module." + k: v for k, v in original.items()})
    assert back_blip.keys() == blip.keys() and all(back_blip[k] is blip[k] for k in blip)
    assert back_head.keys() == head.keys()


def test_unknown_keys_and_misfits_are_refused(tmp_path, converted):
    with pytest.raises(ValueError, match=r"unknown keys \['blip.visual_encoder.blocks.0.ls1.gamma'\]"):
        imagereward_to_hf({"blip.visual_encoder.blocks.0.ls1.gamma": torch.zeros(1), "mlp.layers.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"no mlp.layers.\* head"):
        imagereward_to_hf({"blip.visual_encoder.cls_token": torch.zeros(1)})
    config = save_tiny_blip_config(tmp_path / "blip")
    state = dict(converted[1])
    state["blip.text_encoder.encoder.layer.0.intermediate.dense.weight"] = torch.zeros(64, 16)
    torch.save(state, tmp_path / "bad.pt")
    from rlft.rewards.convert import convert_imagereward

    with pytest.raises(ValueError, match=r"intermediate.dense.weight has shape \(64, 16\), the config's model \(32, 16\)"):
        convert_imagereward(str(tmp_path / "bad.pt"), str(config), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match=r"is not a converted ImageReward directory"):
        ImageReward(str(config))


# (40, 56): resized to 32 x 44, offset 6 either way; (64, 70): resized to 32 x 35, offset 1.5, which
# torchvision's CenterCrop rounds to 2 and transformers' processor floors to 1 (448 x 454 at size 224).
@pytest.mark.parametrize("size", [(40, 56), (64, 70)])
def test_the_score_is_imagerewards(converted, size):
    out, state = converted
    assert json.loads((out / "imagereward.json").read_text()) == {"mean": IMAGEREWARD_MEAN, "std": IMAGEREWARD_STD,
                                                                  "max_length": 35}
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a red cat", "a dog on the table"]
    ours = ImageReward(str(out))(images, prompts)

    # ImageReward's transform written out: resize the short side to 32 (bicubic), centre crop with
    # torchvision's rounded offset, CLIP's normalisation.
    pixels = []
    for image in to_pil(images):
        w, h = image.size
        image = image.resize((int(32 * w / h), 32), Image.BICUBIC)
        left = int(round((image.width - 32) / 2.0))
        array = np.asarray(image.crop((left, 0, left + 32, 32)), dtype=np.float32) / 255
        pixels.append(torch.from_numpy((array - CLIP_MEAN) / CLIP_STD).permute(2, 0, 1))
    pixels = torch.stack(pixels).float()
    tokens = BertTokenizerFast.from_pretrained(out)(prompts, padding="max_length", truncation=True, max_length=35,
                                                    return_tensors="pt")
    assert tokens["input_ids"][:, :7].tolist() == [[2, 5, 6, 7, 5, 10, 8], [2, 5, 9, 11, 12, 13, 3]]  # [CLS] a photo ...
    assert tokens["input_ids"].shape == (2, 35)
    model = BlipForImageTextRetrieval.from_pretrained(out).eval()
    with torch.no_grad():
        text = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels,
                     use_itm_head=True).question_embeds[:, 0]
        x = text
        for i in (0, 2, 4, 6):
            x = F.linear(x, state[f"mlp.layers.{i}.weight"], state[f"mlp.layers.{i}.bias"])
        x = F.linear(x, state["mlp.layers.7.weight"], state["mlp.layers.7.bias"])
        expected = (x.squeeze(-1) - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    # The image matters at this tolerance (so a wrong preprocessing or image path fails the test).
    other = ImageReward(str(out))(images.flip(-1), prompts)
    assert (other - ours).abs().min() > 1e-3, (ours, other)
    # The converted weights are the checkpoint's: ImageReward's position embedding, its vocabulary.
    torch.testing.assert_close(model.vision_model.embeddings.position_embedding.data, state["blip.visual_encoder.pos_embed"])
    assert model.config.vision_config.image_size == 32 and model.config.vision_config.layer_norm_eps == 1e-6
