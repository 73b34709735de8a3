"""`python -m tests.memory_measure MODEL DEVICE`: one LoRA training micro-batch (forward, backward) of
a denoiser at its real width and reduced depth, float32, 512x512 (latents 64), batch 2: on `cpu` the
peak resident memory it adds (measured), on `meta` the peak `rlft.memory.trace` plans. One JSON line."""

import json
import resource
import sys

import torch
from peft import LoraConfig

from rlft.memory.trace import LiveBytes, traced_attention


def build(model: str):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel, WanTransformer3DModel

    if model == "sd35_medium":  # SD3.5 Medium's widths, 2 of its 24 blocks (both with its dual attention)
        net = SD3Transformer2DModel(sample_size=64, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                    pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                                    qk_norm="rms_norm", dual_attention_layers=(0, 1))
        inputs = {"hidden_states": (2, 16, 64, 64), "encoder_hidden_states": (2, 205, 4096), "pooled_projections": (2, 2048),
                  "timestep": (2,)}
    elif model == "sd15":  # SD1.5's UNet in full (`rlft.models.random_sd15`'s architecture)
        net = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2,
                                   block_out_channels=(320, 640, 1280, 1280))
        inputs = {"sample": (2, 4, 64, 64), "encoder_hidden_states": (2, 77, 768), "timestep": (2,)}
    elif model == "wan":  # Wan 2.1 14B's widths, 1 of its 40 blocks, 5 frames of 240x416
        net = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=1,
                                    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
        inputs = {"hidden_states": (2, 16, 2, 30, 52), "encoder_hidden_states": (2, 512, 4096), "timestep": (2,)}
    else:  # FLUX.1's widths, 1 double-stream and 2 single-stream blocks
        net = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=128,
                                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                                     guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        inputs = {"hidden_states": (2, 1024, 64), "encoder_hidden_states": (2, 512, 4096), "pooled_projections": (2, 768),
                  "timestep": (2,), "guidance": (2,), "img_ids": (1024, 3), "txt_ids": (512, 3)}
    net.requires_grad_(False)
    net.add_adapter(LoraConfig(r=32, lora_alpha=64, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                               init_lora_weights="gaussian"))
    return net, inputs


def rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main(model: str, device: str) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    with torch.device(device):
        net, shapes = build(model)
        inputs = {k: torch.rand(*s) for k, s in shapes.items()}
    if device == "meta":
        with traced_attention(), LiveBytes() as traced:
            net(**inputs).sample.square().mean().backward()
        print(json.dumps({"model": model, "planned_mb": traced.peak / 2**20}))
        return
    baseline = rss()
    if resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 > baseline + 50:
        # the earlier peak would hide this one: read the peak of this call from /proc's high-water mark instead
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    net(**inputs).sample.square().mean().backward()
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM"))
    print(json.dumps({"model": model, "measured_mb": peak - baseline, "baseline_mb": baseline}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
