"""open_clip checkpoints into transformers' `CLIPModel`, so that rewards published as open_clip
weights (HPSv2.1: a fine-tuned ViT-H-14) run without open_clip, timm or torchvision (which does
not import beside rlft's CPU torch, and breaks transformers' and diffusers' imports when installed).

    python -m rlft.rewards.convert open_clip HPS_v2.1_compressed.pt \\
        --config laion/CLIP-ViT-H-14-laion2B-s32B-b79K --out hpsv2.1

`--config` is a CLIPModel directory (or hub id) of the same architecture: its config, image
processor and tokenizer are saved beside the converted weights, so `--out` is a complete CLIPModel
directory (`reward=hpsv2 reward.model_path=hpsv2.1`).

    python -m rlft.rewards.convert imagereward ImageReward.pt \\
        --config Salesforce/blip-itm-large-coco --out imagereward

ImageReward-v1.0 (BLIP ViT-L with its MLP head; the `image-reward` package needs transformers 4.x
internals) into transformers' `BlipForImageTextRetrieval` (vision tower and text encoder), its head
and normalisation beside it (`imagereward_head.safetensors`, `imagereward.json`), the image
processor of ImageReward's own transform (resize 224 bicubic, centre crop, CLIP's mean and std) and
`--config`'s BERT tokenizer. BLIP's original keys are those of transformers' BLIP with a few renames
(transformers' own BLIP conversion script's: `visual_encoder.blocks.N.attn.proj` ->
`vision_model.encoder.layers.N.self_attn.projection`, ...); q, k and v stay fused in the vision
tower as in both; the image size and vocabulary come from the checkpoint's shapes.

The key mapping (open_clip's `VisionTransformer`/`TextTransformer` and the CLIP checkpoint layout
they share with OpenAI's) is plain renaming except where the layouts differ: open_clip's attention
keeps q, k and v in one `in_proj` (split here in that order), and its projections are applied as
`x @ proj` where transformers' `Linear` computes `x @ W.T` (transposed here).
"""

import argparse
import re
from pathlib import Path

import torch

_BLOCK = {  # inside a residual block: open_clip -> transformers
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}
_TOWER = {"visual.transformer.": "vision_model.encoder.", "transformer.": "text_model.encoder."}
_PLAIN = {  # whole keys
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_RESBLOCK = re.compile(r"^(visual\.transformer\.|transformer\.)resblocks\.(\d+)\.(.+)$")


def open_clip_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An open_clip CLIP state dict -> transformers CLIPModel's. Refuses keys it does not know
    (a model with other parts, e.g. layer scale or attention pooling, is not this architecture)."""
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.endswith("attn_mask")}
    out, unknown = {}, []
    for key, value in state.items():
        if key in _PLAIN:
            out[_PLAIN[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif match := _RESBLOCK.match(key):
            tower, layer, rest = match.groups()
            prefix = f"{_TOWER[tower]}layers.{layer}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            module, _, kind = rest.rpartition(".")
            if module not in _BLOCK:
                unknown.append(key)
                continue
            out[f"{prefix}{_BLOCK[module]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"not an open_clip CLIP (ViT) checkpoint of the expected layout: unknown keys {unknown[:8]}"
                         f"{' ...' if len(unknown) > 8 else ''}")
    return out


def hf_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `open_clip_to_hf` (tests build open_clip-layout checkpoints with it)."""
    plain = {v: k for k, v in _PLAIN.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    towers = {v: k for k, v in _TOWER.items()}
    out, qkv = {}, {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in plain:
            out[plain[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            match = re.match(r"^(vision_model\.encoder\.|text_model\.encoder\.)layers\.(\d+)\.(.+)\.(weight|bias)$", key)
            if not match:
                raise ValueError(f"not a CLIPModel key: {key}")
            tower, layer, module, kind = match.groups()
            prefix = f"{towers[tower]}resblocks.{layer}."
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[module[-6]] = value
            else:
                out[f"{prefix}{block[module]}.{kind}"] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def load_fitting(model: torch.nn.Module, state: dict[str, torch.Tensor], misfit: str, unused: tuple[str, ...] = ()) -> None:
    """Loads `state` (as float32) into `model` when it has every key of the model except those
    starting with `unused`, and no other, each of the model's shape; else refuses, naming them."""
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing = sorted(k for k in expected - set(state) if not k.startswith(unused))
    extra = sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{misfit}: missing {missing[:6]}, unexpected {extra[:6]}")
    for key, value in state.items():
        shape = tuple(model.state_dict()[key].shape)
        if tuple(value.shape) != shape:
            raise ValueError(f"{misfit}: {key} has shape {tuple(value.shape)}, the config's model {shape}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def convert_open_clip(checkpoint: str, config: str, out: str) -> Path:
    """An open_clip checkpoint (a state dict, or a dict with one under `state_dict`) -> a
    CLIPModel directory at `out`, with `config`'s image processor and tokenizer."""
    from transformers import AutoProcessor, CLIPConfig, CLIPModel

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded)
    model = CLIPModel(CLIPConfig.from_pretrained(config))
    load_fitting(model, open_clip_to_hf(state), f"{checkpoint} does not fit --config {config}")
    model.save_pretrained(out)
    AutoProcessor.from_pretrained(config).save_pretrained(out)
    return Path(out)


_BLIP_VISION = {  # BLIP's VisionTransformer -> BlipVisionModel: whole keys
    "cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight", "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
    "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias",
}
_BLIP_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",  # inside blocks.N
               "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_IMAGEREWARD_UNUSED = ("vision_proj.", "text_proj.", "itm_head.")  # BlipForImageTextRetrieval's, not in the score


def imagereward_to_hf(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """ImageReward's state dict -> (BlipForImageTextRetrieval's keys, the MLP head's `layers.N.*`).
    Refuses keys it does not know. The text encoder's keys (BLIP's `med.py` BERT with
    cross-attention) are transformers' BlipTextModel's as they are."""
    blip, head, unknown = {}, {}, []
    for key, value in state.items():
        key = key.removeprefix("module.")
        vision = key.removeprefix("blip.visual_encoder.")
        block = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", vision)
        if key.startswith("mlp.layers."):
            head[key.removeprefix("mlp.")] = value
        elif key.startswith("blip.visual_encoder.") and vision in _BLIP_VISION:
            blip[f"vision_model.{_BLIP_VISION[vision]}"] = value
        elif key.startswith("blip.visual_encoder.") and block and block.group(2) in _BLIP_BLOCK:
            layer, module, kind = block.groups()
            blip[f"vision_model.encoder.layers.{layer}.{_BLIP_BLOCK[module]}.{kind}"] = value
        elif key.startswith("blip.text_encoder."):
            if not key.endswith("position_ids"):
                blip[key.removeprefix("blip.")] = value
        elif key.startswith(tuple(f"blip.{p}" for p in _IMAGEREWARD_UNUSED)):
            blip[key.removeprefix("blip.")] = value
        else:
            unknown.append(key)
    if unknown or not head:
        raise ValueError(f"not an ImageReward checkpoint of the expected layout: "
                         f"{'unknown keys ' + str(unknown[:8]) if unknown else 'no mlp.layers.* head'}")
    return blip, head


def hf_to_imagereward(blip: dict[str, torch.Tensor], head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `imagereward_to_hf`."""
    vision, block = {v: k for k, v in _BLIP_VISION.items()}, {v: k for k, v in _BLIP_BLOCK.items()}
    out = {f"mlp.{k}": v for k, v in head.items()}
    for key, value in blip.items():
        rest = key.removeprefix("vision_model.")
        layer = re.match(r"^encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", rest)
        if rest in vision:
            out[f"blip.visual_encoder.{vision[rest]}"] = value
        elif layer:
            out[f"blip.visual_encoder.blocks.{layer.group(1)}.{block[layer.group(2)]}.{layer.group(3)}"] = value
        elif not key.endswith("position_ids"):
            out[f"blip.{key}"] = value
    return out


def convert_imagereward(checkpoint: str, config: str, out: str) -> Path:
    """ImageReward.pt -> a directory for reward=imagereward: `config`'s BlipConfig with the
    checkpoint's image size and vocabulary, the converted BLIP, the head, its normalisation, the
    image processor of ImageReward's transform and `config`'s tokenizer."""
    import json

    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BlipConfig, BlipForImageTextRetrieval, CLIPImageProcessor

    from rlft.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, MAX_LENGTH

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    blip, head = imagereward_to_hf(loaded.get("state_dict", loaded))
    cfg = BlipConfig.from_pretrained(config)
    patches = blip["vision_model.embeddings.position_embedding"].shape[1] - 1
    cfg.vision_config.image_size = int(round(patches ** 0.5)) * cfg.vision_config.patch_size
    cfg.vision_config.layer_norm_eps = 1e-6  # BLIP's ViT (timm's LayerNorm eps); transformers' default is 1e-5
    cfg.text_config.vocab_size = blip["text_encoder.embeddings.word_embeddings.weight"].shape[0]
    model = BlipForImageTextRetrieval(cfg)
    load_fitting(model, blip, f"{checkpoint} does not fit --config {config}", unused=_IMAGEREWARD_UNUSED)
    model.save_pretrained(out)
    save_file({k: v.float().contiguous() for k, v in head.items()}, str(Path(out) / "imagereward_head.safetensors"))
    (Path(out) / "imagereward.json").write_text(json.dumps({"mean": IMAGEREWARD_MEAN, "std": IMAGEREWARD_STD,
                                                            "max_length": MAX_LENGTH}, indent=2))
    size = cfg.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)
    AutoTokenizer.from_pretrained(config).save_pretrained(out)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.rewards.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="format", required=True)
    oc = sub.add_parser("open_clip", help="an open_clip CLIP checkpoint (e.g. HPSv2.1) -> a CLIPModel directory")
    oc.add_argument("checkpoint", help="the .pt/.bin file (its state dict, or a dict with 'state_dict')")
    oc.add_argument("--config", required=True, help="a CLIPModel directory or hub id of the same architecture")
    oc.add_argument("--out", required=True, help="the directory to write")
    ir = sub.add_parser("imagereward", help="ImageReward-v1.0 (ImageReward.pt) -> a directory for reward=imagereward")
    ir.add_argument("checkpoint", help="ImageReward.pt (its state dict)")
    ir.add_argument("--config", required=True, help="a BLIP directory or hub id of the same architecture, with its "
                                                    "tokenizer (Salesforce/blip-itm-large-coco)")
    ir.add_argument("--out", required=True, help="the directory to write")
    args = parser.parse_args(argv)
    convert = convert_open_clip if args.format == "open_clip" else convert_imagereward
    print(f"wrote {convert(args.checkpoint, args.config, args.out)}")


if __name__ == "__main__":
    main()
