"""HPSv2.1 without open_clip: the open_clip -> CLIPModel converter (rlft.rewards.convert) round-trips
a state dict, the converted CLIPModel computes what an open_clip-layout forward written here from
open_clip's model code computes on the original keys, the command line writes a complete CLIPModel
directory, and reward=hpsv2 scores cos(image, prompt) without the logit scale, as flow_grpo."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

from rlft.rewards.clip_similarity import ClipSimilarity, to_pil
from rlft.rewards.convert import hf_to_open_clip, open_clip_to_hf
from tests.tiny_sd import tiny_tokenizer


def tiny_vit_clip(seed: int = 0) -> CLIPModel:
    """ViT-H-14's layout at toy width: exact GELU (open_clip's nn.GELU, laion's config says gelu), 2 layers."""
    torch.manual_seed(seed)
    act = {"hidden_act": "gelu"}
    config = CLIPConfig(
        text_config=CLIPTextConfig(vocab_size=74, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=16, bos_token_id=72,
                                   eos_token_id=73, pad_token_id=73, **act).to_dict(),
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=16, patch_size=8, **act).to_dict(),
        projection_dim=8,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or untransposed tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "layrnorm" in name:
                p.normal_(0, 0.5)
    return model


def open_clip_block(x: torch.Tensor, state: dict, prefix: str, heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock: x + attn(ln_1(x)); x + mlp(ln_2(x)), nn.MultiheadAttention
    with one in_proj for q, k, v. x: (L, N, D), open_clip's (sequence first) layout."""
    g = lambda k: state[prefix + k]
    d = x.shape[-1]
    h = F.layer_norm(x, (d,), g("ln_1.weight"), g("ln_1.bias"), 1e-5)
    attn, _ = F.multi_head_attention_forward(h, h, h, d, heads, g("attn.in_proj_weight"), g("attn.in_proj_bias"),
                                             None, None, False, 0.0, g("attn.out_proj.weight"), g("attn.out_proj.bias"),
                                             need_weights=False, attn_mask=mask)
    x = x + attn
    h = F.layer_norm(x, (d,), g("ln_2.weight"), g("ln_2.bias"), 1e-5)
    return x + F.linear(F.gelu(F.linear(h, g("mlp.c_fc.weight"), g("mlp.c_fc.bias"))), g("mlp.c_proj.weight"), g("mlp.c_proj.bias"))


def open_clip_features(state: dict, pixels: torch.Tensor, tokens: torch.Tensor, layers: int = 2, heads: int = 2):
    """open_clip's encode_image / encode_text (VisionTransformer, TextTransformer) on its own keys."""
    x = F.conv2d(pixels, state["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)  # (N, grid², D)
    cls = state["visual.class_embedding"].expand(len(x), 1, -1)
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (x.shape[-1],), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"], 1e-5).transpose(0, 1)
    for i in range(layers):
        x = open_clip_block(x, state, f"visual.transformer.resblocks.{i}.", heads, None)
    x = F.layer_norm(x[0], (x.shape[-1],), state["visual.ln_post.weight"], state["visual.ln_post.bias"], 1e-5)
    image = x @ state["visual.proj"]

    n = tokens.shape[1]
    t = state["token_embedding.weight"][tokens] + state["positional_embedding"][:n]
    causal = torch.full((n, n), float("-inf")).triu(1)
    t = t.transpose(0, 1)
    for i in range(layers):
        t = open_clip_block(t, state, f"transformer.resblocks.{i}.", heads, causal)
    t = F.layer_norm(t.transpose(0, 1), (t.shape[-1],), state["ln_final.weight"], state["ln_final.bias"], 1e-5)
    text = t[torch.arange(len(t)), tokens.argmax(dim=-1)] @ state["text_projection"]  # at the end-of-text token
    return image, text


def test_the_mapping_round_trips_a_state_dict():
    state = tiny_vit_clip().state_dict()
    back = open_clip_to_hf(hf_to_open_clip(state))
    kept = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    assert back.keys() == kept.keys()
    assert all(torch.equal(back[k], kept[k]) for k in kept)


def test_the_converted_model_computes_what_open_clip_computes_on_the_original_keys():
    original = hf_to_open_clip(tiny_vit_clip().state_dict())  # stands for an open_clip checkpoint
    model = tiny_vit_clip(seed=1)  # other weights, replaced by the conversion
    model.load_state_dict(open_clip_to_hf(original), strict=False)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    tokens = torch.tensor([[72, 5, 9, 73, 73, 73], [72, 11, 12, 13, 14, 73], [72, 73, 73, 73, 73, 73]])
    with torch.no_grad():
        image, text = open_clip_features(original, pixels, tokens)
        ours_image = model.get_image_features(pixel_values=pixels)
        ours_text = model.get_text_features(input_ids=tokens)
    ours_image = ours_image if isinstance(ours_image, torch.Tensor) else ours_image.pooler_output
    ours_text = ours_text if isinstance(ours_text, torch.Tensor) else ours_text.pooler_output
    torch.testing.assert_close(ours_image, image, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_text, text, rtol=1e-5, atol=1e-5)


def test_unknown_keys_are_refused_by_name():
    state = hf_to_open_clip(tiny_vit_clip().state_dict()) | {"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(16)}
    with pytest.raises(ValueError, match=r"unknown keys \['visual.transformer.resblocks.0.ls_1.gamma'\]"):
        open_clip_to_hf(state)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An open_clip-layout checkpoint as HPSv2 ships it ({'state_dict': ...}, 'module.' prefixed,
    half precision), converted by the command line against a config directory."""
    root = tmp_path_factory.mktemp("hps")
    original = tiny_vit_clip()
    config_dir = root / "config"
    tiny_vit_clip(seed=3).save_pretrained(config_dir)
    CLIPProcessor(image_processor=__import__("transformers").CLIPImageProcessor(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}), tokenizer=tiny_tokenizer()).save_pretrained(config_dir)
    checkpoint = root / "HPS_v2.1_compressed.pt"
    state = {f"module.{k}": v.half() for k, v in hf_to_open_clip(original.state_dict()).items()}
    torch.save({"state_dict": state, "epoch": 1}, checkpoint)
    out = root / "hpsv2.1"
    subprocess.run([sys.executable, "-m", "rlft.rewards.convert", "open_clip", str(checkpoint), "--config",
                    str(config_dir), "--out", str(out)], check=True, capture_output=True, text=True)
    return original, out


def test_the_command_line_writes_a_complete_clip_directory(converted):
    original, out = converted
    loaded = CLIPModel.from_pretrained(out)
    for key, value in original.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.half().float(), msg=key)  # as stored: half
    CLIPProcessor.from_pretrained(out)  # the processor and tokenizer are there


def test_hpsv2_scores_the_cosine_without_the_logit_scale(converted):
    _, out = converted
    images, prompts = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)), ["a cat", "a dog"]
    reward = ClipSimilarity(str(out), use_logit_scale=False, max_length=16)
    model, processor = CLIPModel.from_pretrained(out), CLIPProcessor.from_pretrained(out)
    inputs = processor(text=prompts, images=to_pil(images), padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        out_ = model(**inputs)
        expected = (F.normalize(out_.image_embeds, dim=-1) * F.normalize(out_.text_embeds, dim=-1)).sum(-1)
        ours = reward(images, prompts)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert ours.abs().max() <= 1


def test_a_checkpoint_of_another_width_is_refused_naming_the_key(tmp_path, converted):
    _, out = converted
    state = hf_to_open_clip(tiny_vit_clip().state_dict())
    state["visual.proj"] = torch.zeros(16, 4)  # projection_dim 4, not the config's 8
    torch.save(state, tmp_path / "other.pt")
    from rlft.rewards.convert import convert_open_clip

    with pytest.raises(ValueError, match=r"does not fit --config .*visual_projection.weight has shape \(4, 16\)"):
        convert_open_clip(str(tmp_path / "other.pt"), str(out), str(tmp_path / "x"))
