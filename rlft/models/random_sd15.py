"""Random-weight models of Stable Diffusion 1.5's real architecture, built and saved locally.

What depends on model size (checkpoint size, peak memory, copies of networks) is measured on
these: SD1.5's UNet (860M parameters), VAE (84M) and CLIP ViT-L/14 text encoder (123M), and a
CLIP ViT-L/14 model with an aesthetic head (the aesthetic reward and SEIKO's ensemble
backbone), with random weights, since nothing may be downloaded. Only the tokenizers are
small (a character vocabulary: the text encoder keeps SD1.5's 49,408-token embedding).
`python -m rlft.models.random_sd15 DIR` writes DIR/pipeline, DIR/clip, DIR/aesthetic_head.pth.
"""

import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from rlft.rewards.aesthetic import AestheticMLP

VOCAB_SIZE = 49408  # SD1.5's CLIP tokenizer
SD15_TEXT = dict(vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, projection_dim=768)


def character_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single characters (no merges): every lowercase word encodes,
    no vocabulary file needs downloading."""
    vocab = {}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def save_random_sd15(path: Path, seed: int = 0) -> Path:
    """A StableDiffusionPipeline directory with SD1.5's UNet, VAE and text encoder shapes."""
    torch.manual_seed(seed)
    tokenizer = character_tokenizer()
    ids = dict(bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1)
    text = {k: v for k, v in SD15_TEXT.items() if k != "projection_dim"}
    text_encoder = CLIPTextModel(CLIPTextConfig(**text, **ids))
    unet = UNet2DConditionModel(  # diffusers' defaults are SD1.5's, but for the text width
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
    )
    return save_sd_pipeline(path, unet, vae, text_encoder, tokenizer)


def save_sd_pipeline(path: Path, unet, vae, text_encoder, tokenizer) -> Path:
    """A StableDiffusionPipeline directory of these components, with SD's PNDM scheduler config
    (rlft reads it into DDIM, as DDPO does)."""
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                              steps_offset=1, set_alpha_to_one=False)
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(path)
    return path


def save_random_clip_l14(path: Path, seed: int = 0) -> Path:
    """A CLIPModel directory of ViT-L/14's shapes (428M parameters) with its image processor."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={k: v for k, v in SD15_TEXT.items() if k != "projection_dim"},
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14),
        projection_dim=768,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(path)
    return path


def save_random_aesthetic_head(path: Path, seed: int = 1) -> Path:
    torch.manual_seed(seed)
    torch.save(AestheticMLP(768).state_dict(), path)
    return path


def save_all(root: Path) -> dict[str, Path]:
    """Writes what is missing under `root`; -> the paths of pipeline, clip and aesthetic head."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {"pipeline": root / "pipeline", "clip": root / "clip", "aesthetic_head": root / "aesthetic_head.pth"}
    builders = {"pipeline": save_random_sd15, "clip": save_random_clip_l14, "aesthetic_head": save_random_aesthetic_head}
    for name, path in paths.items():
        if not path.exists():
            partial = path.with_name(path.name + ".partial")
            builders[name](partial)
            partial.rename(path)  # a directory that exists is complete
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlft.models.random_sd15 DIR")
    for name, path in save_all(Path(sys.argv[1])).items():
        print(f"{name}: {path}")
