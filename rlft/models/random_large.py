"""Random-weight models at the real width of the large families, built and saved locally, for
what depends on size (peak memory, checkpoint size) measured on a CPU (`rlft.tools.size_check`):

- Wan 2.1 T2V 1.3B: its transformer at full size (30 blocks, 1.4B parameters) and its VAE, with
  a one-layer UMT5 as wide as the transformer reads it (d_model 4096; the real UMT5-XXL is 5.7B);
- FLUX.1: its transformer at its real width (24 heads of 128, T5 width 4096, CLIP width 768) with
  `units` double-stream blocks and twice as many single-stream ones (FLUX.1 has 19 and 38: 19
  such units), one-layer text encoders of the real widths and a small VAE: float32 12B does not
  fit these machines, so the figures per unit are measured and extrapolated.

Tokenizers are character-level (nothing is downloaded). `python -m rlft.models.random_large DIR`.
"""

import sys
from pathlib import Path

import torch


def character_t5_tokenizer(max_length: int = 8):
    """A character-level Unigram T5 tokenizer, built with `tokenizers` (no download)."""
    from tokenizers import Tokenizer, models
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789 "]
    return T5TokenizerFast(tokenizer_object=Tokenizer(models.Unigram(pieces, unk_id=2)), pad_token="<pad>",
                           eos_token="</s>", unk_token="<unk>", model_max_length=max_length, extra_ids=0)


def save_random_wan21_1_3b(path: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    tokenizer = character_t5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=256, num_layers=1,
                                               num_heads=4, decoder_start_token_id=0))
    transformer = WanTransformer3DModel(  # Wan-AI/Wan2.1-T2V-1.3B-Diffusers' transformer config
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
        text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=1e-6, rope_max_seq_len=1024,
    )
    vae = AutoencoderKLWan()  # diffusers' defaults are Wan 2.1's VAE
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                scheduler=scheduler).save_pretrained(path)
    return path


def save_random_flux(path: Path, units: int, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from rlft.models.random_sd15 import character_tokenizer

    torch.manual_seed(seed)
    clip_tokenizer = character_tokenizer(16)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=len(clip_tokenizer), hidden_size=768, intermediate_size=256,
                                        num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=16,
                                        bos_token_id=len(clip_tokenizer) - 2, eos_token_id=len(clip_tokenizer) - 1,
                                        pad_token_id=len(clip_tokenizer) - 1))
    t5_tokenizer = character_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=4,
                                 decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(  # black-forest-labs/FLUX.1-dev's config, fewer blocks
        patch_size=1, in_channels=64, num_layers=units, num_single_layers=2 * units, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        norm_num_groups=4, sample_size=64, shift_factor=0.1159, scaling_factor=0.3611)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer,
                 text_encoder_2=t5, tokenizer_2=t5_tokenizer).save_pretrained(path)
    return path


def save_once(path: Path, build) -> Path:
    """`build(partial)` unless `path` exists; a directory that exists is complete."""
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        build(partial)
        partial.rename(path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rlft.models.random_large DIR")
    root = Path(sys.argv[1])
    print(save_once(root / "wan21_1_3b", save_random_wan21_1_3b))
    for units in (1, 2):
        print(save_once(root / f"flux_{units}", lambda p, u=units: save_random_flux(p, u)))
