"""The published architectures of the models rlft's configs name, as their hub repositories' config
files describe them (transcribed; nothing is downloaded), so that `rlft memory` plans a run on
any machine: each component is built from its config on the `meta` device (no weights). A model
directory on disk, or a hub id in the local cache, is read from its own files instead.

Per hub id: the pipeline's `model_index.json` fields, then each folder's config, with `_class_name`
(the library class) and, for a tokenizer, `model_max_length`. Parameter counts the builds give are
checked against the published ones in `tests/test_memory_plan.py`.
"""

CLIP_L = {"_class_name": "CLIPTextModel", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "vocab_size": 49408, "projection_dim": 768,
          "hidden_act": "quick_gelu"}
CLIP_G = {"_class_name": "CLIPTextModelWithProjection", "hidden_size": 1280, "intermediate_size": 5120,
          "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77, "vocab_size": 49408,
          "projection_dim": 1280, "hidden_act": "gelu"}
T5_XXL = {"_class_name": "T5EncoderModel", "d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24,
          "vocab_size": 32128, "feed_forward_proj": "gated-gelu", "is_gated_act": True, "dense_act_fn": "gelu_new"}
UMT5_XXL = {**T5_XXL, "_class_name": "UMT5EncoderModel", "vocab_size": 256384}
CLIP_TOKENIZER = {"_class_name": "CLIPTokenizer", "model_max_length": 77}
T5_TOKENIZER = {"_class_name": "T5TokenizerFast", "model_max_length": 512}
QWEN_TOKENIZER = {"_class_name": "Qwen2Tokenizer", "model_max_length": 131072}


def sd_vae(latent_channels: int, sample_size: int, scaling: float, shift: float | None = None, quant: bool = True) -> dict:
    return {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": latent_channels,
            "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2, "norm_num_groups": 32,
            "sample_size": sample_size, "scaling_factor": scaling, "shift_factor": shift, "use_quant_conv": quant,
            "use_post_quant_conv": quant}


def sd_unet(cross_attention_dim: int, heads, sample_size: int, linear_projection: bool = False, **extra) -> dict:
    return {"_class_name": "UNet2DConditionModel", "sample_size": sample_size, "in_channels": 4, "out_channels": 4,
            "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": cross_attention_dim,
            "attention_head_dim": heads, "use_linear_projection": linear_projection,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, **extra}


DDIM = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
FLUX_FLOW = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
             "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


def sd3(layers: int, heads: int, pos_embed: int, qk_norm, dual: list[int]) -> dict:
    return {
        "model_index.json": {"_class_name": "StableDiffusion3Pipeline"},
        "transformer": {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
                        "num_layers": layers, "attention_head_dim": 64, "num_attention_heads": heads,
                        "joint_attention_dim": 4096, "caption_projection_dim": 64 * heads, "pooled_projection_dim": 2048,
                        "out_channels": 16, "pos_embed_max_size": pos_embed, "qk_norm": qk_norm,
                        "dual_attention_layers": dual},
        "vae": sd_vae(16, 1024, 1.5305, 0.0609, quant=False),
        "text_encoder": {**CLIP_L, "_class_name": "CLIPTextModelWithProjection"}, "tokenizer": CLIP_TOKENIZER,
        "text_encoder_2": CLIP_G, "tokenizer_2": CLIP_TOKENIZER,
        "text_encoder_3": T5_XXL, "tokenizer_3": T5_TOKENIZER,
        "scheduler": FLOW,
    }


def flux(guidance: bool) -> dict:
    return {
        "model_index.json": {"_class_name": "FluxPipeline"},
        "transformer": {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": 19,
                        "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
                        "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": guidance,
                        "axes_dims_rope": [16, 56, 56]},
        "vae": sd_vae(16, 1024, 0.3611, 0.1159, quant=False),
        "text_encoder": CLIP_L, "tokenizer": CLIP_TOKENIZER, "text_encoder_2": T5_XXL, "tokenizer_2": T5_TOKENIZER,
        "scheduler": FLUX_FLOW,
    }


def wan(heads: int, ffn: int, layers: int) -> dict:
    return {
        "model_index.json": {"_class_name": "WanPipeline"},
        "transformer": {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "num_attention_heads": heads,
                        "attention_head_dim": 128, "in_channels": 16, "out_channels": 16, "text_dim": 4096,
                        "freq_dim": 256, "ffn_dim": ffn, "num_layers": layers, "cross_attn_norm": True,
                        "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024},
        "vae": {"_class_name": "AutoencoderKLWan"},  # diffusers' defaults are Wan 2.1's VAE
        "text_encoder": UMT5_XXL, "tokenizer": {"_class_name": "T5TokenizerFast", "model_max_length": 512},
        "scheduler": {"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction",
                      "use_flow_sigmas": True, "flow_shift": 3.0},
    }


PUBLISHED = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": {
        "model_index.json": {"_class_name": "StableDiffusionPipeline"},
        "unet": sd_unet(768, 8, 64), "vae": sd_vae(4, 512, 0.18215), "text_encoder": CLIP_L, "tokenizer": CLIP_TOKENIZER,
        "scheduler": DDIM,
    },
    "stabilityai/stable-diffusion-2-1": {
        "model_index.json": {"_class_name": "StableDiffusionPipeline"},
        "unet": sd_unet(1024, [5, 10, 20, 20], 96, linear_projection=True), "vae": sd_vae(4, 768, 0.18215),
        "text_encoder": {**CLIP_L, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                         "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu"},
        "tokenizer": CLIP_TOKENIZER, "scheduler": {**DDIM, "prediction_type": "v_prediction"},
    },
    "stabilityai/stable-diffusion-xl-base-1.0": {
        "model_index.json": {"_class_name": "StableDiffusionXLPipeline", "force_zeros_for_empty_prompt": True},
        "unet": {**sd_unet(2048, [5, 10, 20], 128, linear_projection=True), "block_out_channels": [320, 640, 1280],
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 "transformer_layers_per_block": [1, 2, 10], "addition_embed_type": "text_time",
                 "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816},
        "vae": sd_vae(4, 1024, 0.13025), "text_encoder": {**CLIP_L, "projection_dim": 768},
        "tokenizer": CLIP_TOKENIZER, "text_encoder_2": CLIP_G, "tokenizer_2": CLIP_TOKENIZER, "scheduler": DDIM,
    },
    "stabilityai/stable-diffusion-3-medium-diffusers": sd3(24, 24, 192, None, []),
    "stabilityai/stable-diffusion-3.5-medium": sd3(24, 24, 384, "rms_norm", list(range(13))),
    "stabilityai/stable-diffusion-3.5-large": sd3(38, 38, 192, "rms_norm", []),
    "black-forest-labs/FLUX.1-dev": flux(guidance=True),
    "black-forest-labs/FLUX.1-schnell": flux(guidance=False),
    "Qwen/Qwen-Image": {
        "model_index.json": {"_class_name": "QwenImagePipeline"},
        "transformer": {"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64,
                        "out_channels": 16, "num_layers": 60, "attention_head_dim": 128, "num_attention_heads": 24,
                        "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]},
        "vae": {"_class_name": "AutoencoderKLQwenImage"},  # diffusers' defaults are Qwen-Image's VAE
        "text_encoder": {"_class_name": "Qwen2_5_VLForConditionalGeneration",
                         "text_config": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                                         "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                                         "max_position_embeddings": 128000, "rope_theta": 1e6, "rms_norm_eps": 1e-6},
                         "vision_config": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                                           "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                                           "temporal_patch_size": 2, "window_size": 112,
                                           "fullatt_block_indexes": [7, 15, 23, 31]}},
        "tokenizer": QWEN_TOKENIZER,
        "scheduler": {**FLUX_FLOW, "shift": 1.0, "max_shift": 0.9, "max_image_seq_len": 8192},
    },
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": wan(12, 8960, 30),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": wan(40, 13824, 40),
    "black-forest-labs/FLUX.2-klein-4B": {
        "model_index.json": {"_class_name": "Flux2KleinPipeline", "is_distilled": True},
        "transformer": {"_class_name": "Flux2Transformer2DModel", "patch_size": 1, "in_channels": 128, "num_layers": 5,
                        "num_single_layers": 20, "attention_head_dim": 128, "num_attention_heads": 24,
                        "joint_attention_dim": 7680, "timestep_guidance_channels": 256,
                        "axes_dims_rope": [32, 32, 32, 32], "guidance_embeds": False},
        "vae": {"_class_name": "AutoencoderKLFlux2"},
        "text_encoder": {"_class_name": "Qwen3ForCausalLM", "hidden_size": 2560, "intermediate_size": 9728,
                         "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                         "vocab_size": 151936, "max_position_embeddings": 40960, "tie_word_embeddings": True},
        "tokenizer": QWEN_TOKENIZER, "scheduler": FLUX_FLOW,
    },
}
