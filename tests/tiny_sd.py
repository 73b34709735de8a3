"""A tiny Stable Diffusion pipeline and a tiny CLIP, built and saved by the tests, so the
real `from_pretrained` loading code runs without downloading anything."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPImageProcessor, CLIPModel, CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig

from rlft.models.random_sd15 import character_tokenizer, save_sd_pipeline
from rlft.rewards.aesthetic import AestheticMLP


def tiny_tokenizer(max_length: int = 16) -> CLIPTokenizer:
    """Character-level BPE vocabulary (no merges): every lowercase word is encodable."""
    return character_tokenizer(max_length)


def save_tiny_sd(path: Path) -> Path:
    """A StableDiffusionPipeline directory: 16x16 latents of 4 channels, a 64x64 image VAE."""
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1,
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
        sample_size=64,
    )
    return save_sd_pipeline(path, unet, vae, text_encoder, tokenizer)


def save_tiny_clip(path: Path, projection_dim: int = 8) -> Path:
    """A CLIPModel directory with its image processor (16x16 crops)."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=74, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, max_position_embeddings=16, bos_token_id=72,
                                   eos_token_id=73, pad_token_id=73).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=16, patch_size=8).to_dict(),
        projection_dim=projection_dim,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)  # 74 tokens, as its text config: CLIPProcessor.from_pretrained(path) works
    return path


def save_tiny_aesthetic_head(path: Path, input_dim: int = 8) -> Path:
    torch.manual_seed(1)
    torch.save(AestheticMLP(input_dim).state_dict(), path)
    return path


def tiny_t5_tokenizer(max_length: int = 8):
    """A character-level Unigram T5 tokenizer, built with `tokenizers` (no download)."""
    from tokenizers import Tokenizer, models
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789 "]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    return T5TokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           model_max_length=max_length, extra_ids=0)


def save_tiny_sd3(path: Path, with_t5: bool = True) -> Path:
    """A StableDiffusion3Pipeline directory: two tiny CLIPs (+ a tiny T5), a 1-layer SD3
    transformer on 8x8 latents of 4 channels, a 32x32 image VAE with SD3's shift factor."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = lambda: CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=74, hidden_size=16, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=72, eos_token_id=73, pad_token_id=73, projection_dim=16,
    ))
    t5_tokenizer = tiny_t5_tokenizer() if with_t5 else None
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4, decoder_start_token_id=0)) if with_t5 else None
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=32,
        pos_embed_max_size=16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
        sample_size=32, shift_factor=0.06, scaling_factor=1.5,
    )
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(), tokenizer=tiny_tokenizer(), text_encoder_2=clip(), tokenizer_2=tiny_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer,
    )
    pipeline.save_pretrained(path)
    return path


def save_tiny_flux(path: Path, guidance_embeds: bool = True) -> Path:
    """A FluxPipeline directory: a tiny CLIP-L stand-in (pooled 16), a tiny T5 (32), a 1+1-block
    FLUX transformer on 8x8 latents of 4 channels (16 packed), a 32x32 image VAE with a shift,
    and FLUX.1-dev's scheduler (dynamic shifting). `guidance_embeds=False`: schnell's layout."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=74, hidden_size=16, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=72, eos_token_id=73, pad_token_id=73,
    ))
    t5_tokenizer = tiny_t5_tokenizer()
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                 num_heads=4, decoder_start_token_id=0))
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
        sample_size=32, shift_factor=0.1, scaling_factor=0.4,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tiny_tokenizer(),
                 text_encoder_2=t5, tokenizer_2=t5_tokenizer).save_pretrained(path)
    return path


def save_tiny_sdxl(path: Path) -> Path:
    """A StableDiffusionXLPipeline directory: two tiny CLIPs (hidden 16 each, CLIP-G's projection
    16), a UNet on 8x8 latents with SDXL's text-time added conditioning, a 32x32 image VAE."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = dict(vocab_size=74, hidden_size=16, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                  max_position_embeddings=16, bos_token_id=72, eos_token_id=73, pad_token_id=73)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=4,
        sample_size=32,
    )
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**config)), tokenizer=tiny_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=16)),
        tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
    ).save_pretrained(path)
    return path


def tiny_qwen_tokenizer():
    """A word-level tokenizer with Qwen's chat tokens, built with `tokenizers` (no download); the
    pipeline's prompt template's prefix is 34 tokens with it, as with Qwen2.5-VL's own."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast  # saved and reloaded as built (Qwen2Tokenizer rebuilds a BPE)

    words = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "\n", "a", "cat", "dog", "fox"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]+|\n"), behavior="removed", invert=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def save_tiny_qwen_image(path: Path) -> Path:
    """A QwenImagePipeline directory: a 2-layer Qwen2.5-VL (hidden 16), a 1-layer transformer on
    8x8 latents of 4 channels (16 packed), a Qwen-Image VAE (4x downsampling, 32x32 images)."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 2, "vocab_size": 32, "rope_theta": 1e6,
                     "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=32, vision_start_token_id=28, vision_end_token_id=29, vision_token_id=30,
        image_token_id=31, video_token_id=27,
    )
    transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    vae = AutoencoderKLQwenImage(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                                 latents_mean=[0.1, -0.1, 0.0, 0.2], latents_std=[1.5, 0.5, 1.0, 2.0])
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192)
    QwenImagePipeline(transformer=transformer, vae=vae, scheduler=scheduler, text_encoder=Qwen2_5_VLForConditionalGeneration(config),
                      tokenizer=tiny_qwen_tokenizer()).save_pretrained(path)
    return path


def save_tiny_wan(path: Path) -> Path:
    """A WanPipeline directory: a tiny T5 encoder (32), a 1-layer Wan transformer (patches 1x2x2),
    a Wan VAE (4x in time, 8x in space): 5 frames of 32x32 are latents (16, 2, 4, 4)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=37, num_layers=1,
                                               num_heads=4, decoder_start_token_id=0))
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                                        out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=1,
                                        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, vae=vae,
                scheduler=scheduler).save_pretrained(path)
    return path


def save_tiny_flux2_klein(path: Path, is_distilled: bool = False) -> Path:
    """A Flux2KleinPipeline directory: a 3-layer Qwen3 (hidden 16) with Qwen's chat template, a
    1+1-block FLUX.2 transformer (in 16 = 4 x 4 patchified channels), a FLUX.2 VAE with its
    batch-norm statistics set away from 0 and 1 (so that decoding is tested to use them)."""
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_qwen_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    text_encoder = Qwen3ForCausalLM(Qwen3Config(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=3,
                                                num_attention_heads=2, num_key_value_heads=2, head_dim=8,
                                                max_position_embeddings=64))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                          attention_head_dim=16, num_attention_heads=2, joint_attention_dim=48,
                                          timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False)
    vae = AutoencoderKLFlux2(sample_size=32, in_channels=3, out_channels=3, latent_channels=4,
                             down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                             block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                             use_quant_conv=False, use_post_quant_conv=False)
    with torch.no_grad():
        vae.bn.running_mean.copy_(torch.linspace(-0.5, 0.5, vae.bn.running_mean.numel()))
        vae.bn.running_var.copy_(torch.linspace(0.5, 2.0, vae.bn.running_var.numel()))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer,
                       is_distilled=is_distilled).save_pretrained(path)
    return path
