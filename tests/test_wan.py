"""Wan 2.1 text-to-video on a tiny WanPipeline the tests save (a tiny UMT5, a 1-layer Wan
transformer, a Wan VAE): the real loaders; prompt encoding and the transformer call against the
pipeline's own loop on the same flow-matching schedule; Flow-GRPO's SDE step on video latents
with exact log-probabilities; image rewards on frames; PPO and GRPO through the CLI with videos
in TensorBoard, and LoRA that loads into a plain WanPipeline."""

import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.wan import load_wan
from rlft.rewards import frames
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import (algorithm_run, assert_every_saved_layer_loads,
                                         assert_stored_log_probs_recompute, save_tiny_assets, sd_overrides)
from tests.tiny_sd import save_tiny_wan

TINY_VIDEO = {"num_frames": 5, "height": 32, "width": 32, "max_sequence_length": 8}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_wan"), {"wan": save_tiny_wan})


def wan_overrides(assets) -> list[str]:
    return [*sd_overrides(assets, model="wan21_t2v_1_3b", pipeline="wan"),
            *(f"model.{key}={value}" for key, value in TINY_VIDEO.items())]


def test_the_policys_ode_chain_is_wanpipelines_loop_on_the_same_schedule(assets):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    components = load_wan(str(assets["wan"]), dtype="float32", **TINY_VIDEO)
    assert components["scheduler"].config.shift == 3.0  # the pipeline's flow shift
    policy = DiffusionPolicy(**components, num_steps=3, guidance_scale=2.0, lora_rank=None)
    noise = policy.initial_latents(2, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 16, 2, 4, 4)  # 5 frames -> 2 latent frames; 32 px -> 4
    x = noise
    with torch.no_grad():
        embeds = policy.encode_prompts(["a cat", "a dog"])
        for t in policy.sampler.timesteps:
            x = policy.sampler.ode_step(policy.predict(x, t, embeds), t, x)
    pipe = WanPipeline.from_pretrained(assets["wan"])
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    theirs = pipe(["a cat", "a dog"], negative_prompt="", height=32, width=32, num_frames=5, num_inference_steps=3,
                  guidance_scale=2.0, latents=noise, max_sequence_length=8, output_type="latent").frames
    torch.testing.assert_close(x, theirs, rtol=1e-5, atol=1e-5)


def test_video_trajectories_recompute_their_log_probs_and_decode_to_frames(assets):
    policy = DiffusionPolicy(**load_wan(str(assets["wan"]), dtype="float32", **TINY_VIDEO), num_steps=3,
                             guidance_scale=2.0)
    traj = policy.sample(["a cat", "a dog"], generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (2, 3, 16, 2, 4, 4) and traj.images.shape == (2, 5, 3, 32, 32)
    assert 0 <= traj.images.min() and traj.images.max() <= 1
    assert_stored_log_probs_recompute(policy, ["a cat", "a dog"])


def test_an_image_reward_scores_every_frame_and_averages():
    seen = {}

    def brightness(images, prompts):
        seen["shape"], seen["prompts"] = tuple(images.shape), list(prompts)
        return images.mean(dim=(1, 2, 3))

    videos = torch.rand(2, 3, 1, 4, 4)
    rewards = frames.score(brightness, videos, ["a", "b"])
    assert seen == {"shape": (6, 1, 4, 4), "prompts": ["a", "a", "a", "b", "b", "b"]}
    torch.testing.assert_close(rewards, videos.mean(dim=(2, 3, 4)).mean(dim=1))
    assert torch.equal(frames.score(brightness, videos[:, 0], ["a", "b"]), videos[:, 0].mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_on_wan_logs_videos_and_its_lora_loads_into_a_plain_wan_pipeline(assets, tmp_path, algorithm):
    from diffusers import WanPipeline
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    run_rlft(*wan_overrides(assets), *algorithm_run(algorithm), f"hydra.run.dir={run}",
             cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"] + scalars["eval/oracle_reward"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    events = EventAccumulator(str(run), size_guidance={"images": 0}).Reload()
    gif = events.Images("samples")[0].encoded_image_string
    assert gif[:6] == b"GIF89a"  # an animated GIF of the sampled videos in TensorBoard's Images tab

    pipe = WanPipeline.from_pretrained(assets["wan"])
    draw = dict(height=32, width=32, num_frames=5, max_sequence_length=8)
    pipe.load_lora_weights(run / "lora")
    assert_every_saved_layer_loads(pipe.transformer, run / "lora", "transformer.")
    tuned = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt", **draw).frames
    pipe.unload_lora_weights()
    base = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt", **draw).frames
    assert tuned.shape == base.shape == (1, 5, 3, 32, 32)
    assert (tuned - base).abs().max() > 1e-4, "the LoRA weights did not change the pipeline's output"
