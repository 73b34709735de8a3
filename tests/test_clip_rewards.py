"""PickScore and CLIPScore (rlft.rewards.clip_similarity) on a tiny CLIP the tests save: the
score against CLIPModel's own forward on the processor's inputs (the public scorers' computation),
the divisor, the differentiable variant, and a run through the CLI."""

import math

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

from rlft.rewards.clip_similarity import ClipSimilarity, to_pil
from rlft.tools.tensorboard import read_scalars
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft
from tests.tiny_sd import save_tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


@pytest.mark.parametrize("divisor", [1.0, 26.0])
def test_the_score_is_logits_per_image_of_the_processors_inputs(clip_dir, divisor):
    images, prompts = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)), ["a cat", "a dog", "a fox"]
    reward = ClipSimilarity(str(clip_dir), divisor=divisor, max_length=16)
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    pil = [img for img in to_pil(images)]
    assert pil[0].mode == "RGB" and pil[0].size == (16, 16)
    inputs = processor(text=prompts, images=pil, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.diagonal() / divisor  # logit_scale.exp() * cos, per pair
        ours = reward(images, prompts)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_differentiable_scores_pass_gradients_and_stay_close(clip_dir):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    exact = ClipSimilarity(str(clip_dir), max_length=16)(images, ["a cat", "a dog"])
    smooth = ClipSimilarity(str(clip_dir), differentiable=True, max_length=16)(images, ["a cat", "a dog"])
    smooth.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    torch.testing.assert_close(smooth.detach(), exact, rtol=0, atol=0.05 * exact.abs().max().item())  # 8-bit rounding


def test_a_non_positive_divisor_is_refused(clip_dir):
    with pytest.raises(ValueError, match=r"reward.divisor=0 is invalid: must be > 0"):
        ClipSimilarity(str(clip_dir), divisor=0)


@pytest.mark.parametrize("option", ["pickscore", "clipscore"])
def test_the_configs_compose_with_a_local_model(clip_dir, option):
    from hydra.utils import instantiate

    cfg = compose_cfg([f"reward={option}", f"reward.model_path={clip_dir}", f"reward.processor_path={clip_dir}",
                       "+reward.max_length=16"])
    reward = instantiate(cfg.reward)
    assert reward(torch.rand(2, 3, 16, 16), ["a cat", "a dog"]).shape == (2,)


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_runs_on_pickscore_through_the_cli(clip_dir, tmp_path, algorithm):
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    run = tmp_path / "run"
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith("reward")]
    run_rlft(*overrides, "model.max_sequence_length=8", "reward=pickscore", f"reward.model_path={clip_dir}",
             f"reward.processor_path={clip_dir}", "+reward.max_length=16", "reward.divisor=26", f"algorithm={algorithm}",
             *(["algorithm.group_size=2"] if algorithm == "grpo" else []), "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2",
             f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert scalars["reward/mean"] and all(math.isfinite(v) for _, v in scalars["reward/mean"] + scalars["eval/oracle_reward"])


def test_tensor_preprocessing_is_torchvisions_transforms_written_out():
    """DiffusionNFT's scorers: CLIP's Resize + CenterCrop (offsets rounded), HPSv2's ResizeMaxSize (padded)."""
    import torch.nn.functional as F

    from rlft.rewards.aesthetic import tensor_preprocess

    images = torch.rand(2, 3, 64, 70, generator=torch.Generator().manual_seed(2))
    # Resize(32): 64 x 70 -> 32 x int(32 * 70 / 64) = 32 x 35; CenterCrop(32): left int(round(1.5)) = 2.
    resized = F.interpolate(images, size=(32, 35), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(tensor_preprocess(images, 32, "bilinear", "crop"), resized[..., 2:34])
    assert not torch.equal(resized[..., 2:34], resized[..., 1:33])  # the offset matters
    tall = images.transpose(-1, -2)  # 70 x 64 -> 35 x 32, top 2
    resized = F.interpolate(tall, size=(35, 32), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(tensor_preprocess(tall, 32, "bicubic", "crop"), resized[..., 2:34, :])
    # ResizeMaxSize(32): 48 x 64 -> round(48 / 2) x 32 = 24 x 32, then 4 rows of zeros above and 4 below.
    wide = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(3))
    padded = tensor_preprocess(wide, 32, "bicubic", "pad")
    resized = F.interpolate(wide, size=(24, 32), mode="bicubic", align_corners=False, antialias=True)
    assert padded.shape == (1, 3, 32, 32) and torch.equal(padded[..., 4:28, :], resized)
    assert padded[..., :4, :].abs().sum() == 0 and padded[..., 28:, :].abs().sum() == 0
    square = torch.rand(1, 3, 32, 32)
    assert torch.equal(tensor_preprocess(square, 32, "bilinear", "crop"), square)
    assert torch.equal(tensor_preprocess(square, 32, "bicubic", "pad"), square)


def test_the_tensor_path_scores_the_float_images_without_rounding(clip_dir):
    import torch.nn.functional as F

    images, prompts = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(4)), ["a cat", "a dog"]
    reward = ClipSimilarity(str(clip_dir), max_length=16, preprocess="tensor", resize="bilinear")
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    size = processor.image_processor.crop_size["height"]
    new_w = int(size * 24 / 20)
    resized = F.interpolate(images, size=(size, new_w), mode="bilinear", align_corners=False, antialias=True)
    left = int(round((new_w - size) / 2.0))
    mean = torch.tensor(processor.image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, 1, 1)
    pixels = (resized[..., left : left + size] - mean) / std
    text = processor(text=prompts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = model(pixel_values=pixels, **text).logits_per_image.diagonal()
        ours = reward(images, prompts)
        rounded = ClipSimilarity(str(clip_dir), max_length=16, preprocess="tensor", resize="bilinear")(
            (images * 255).round() / 255, prompts)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours, rounded)  # no 8-bit rounding on this path


def test_the_image_path_settings_are_checked_at_composition(clip_dir):
    from rlft.checks import ConfigError
    from rlft.run.validation import validate

    for override, message in (("reward.preprocess=pil", r"reward.preprocess='pil' is invalid: must be one of \['processor', 'tensor'\]"),
                              ("reward.resize=bilinear", r"reward.resize='bilinear', reward.fit='crop' are invalid with reward.preprocess=processor")):
        cfg = compose_cfg(["reward=clipscore", f"reward.model_path={clip_dir}", override])
        with pytest.raises(ConfigError, match=message):
            validate(cfg)
