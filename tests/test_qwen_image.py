"""Qwen-Image on a tiny QwenImagePipeline the tests save (a 2-layer Qwen2.5-VL, a 1-layer
transformer, its VAE): the real loaders; the prompt template and mask, packing, img_shapes,
t / 1000, the dynamic shift and true CFG with its norm rescaling against the pipeline's own
loop; PPO and GRPO through `model=qwen_image`, and LoRA that loads into a plain QwenImagePipeline."""

import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.types import PromptEmbeds
from rlft.models.qwen_image import load_qwen_image
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import (algorithm_run, assert_every_saved_layer_loads,
                                         assert_lora_changes_the_pipeline, assert_stored_log_probs_recompute,
                                         save_tiny_assets, sd_overrides)
from tests.tiny_sd import save_tiny_qwen_image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_qwen"), {"qwen": save_tiny_qwen_image})


def components(assets):
    return load_qwen_image(str(assets["qwen"]), dtype="float32", max_sequence_length=16)


def test_prompts_keep_their_own_length_and_batch_with_their_mask(assets):
    from diffusers import QwenImagePipeline

    model = components(assets)["model"]
    short, long = model.encode_prompts(["a cat"]), model.encode_prompts(["a dog a fox"])
    tokens, mask = QwenImagePipeline.from_pretrained(assets["qwen"]).encode_prompt(["a cat", "a dog a fox"],
                                                                                 max_sequence_length=16)
    both = PromptEmbeds.cat([short, long])  # padded to the longer, the padding masked out
    assert short.tokens.shape[1] < long.tokens.shape[1] == tokens.shape[1]
    assert torch.equal(both.mask, mask) and torch.equal(both.tokens, tokens)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_the_policys_ode_chain_is_qwenimagepipelines_denoising_loop(assets, guidance_scale):
    from diffusers import QwenImagePipeline

    policy = DiffusionPolicy(**components(assets), num_steps=3, guidance_scale=guidance_scale, lora_rank=None,
                             latent_size=8)
    noise = policy.initial_latents(2, torch.Generator().manual_seed(0))
    x = noise
    with torch.no_grad():
        embeds = policy.encode_prompts(["a cat", "a dog a fox"])
        for t in policy.sampler.timesteps:
            x = policy.sampler.ode_step(policy.predict(x, t, embeds), t, x)

    pipe = QwenImagePipeline.from_pretrained(assets["qwen"])
    packed = QwenImagePipeline._pack_latents(noise, 2, 4, 8, 8)
    cfg = {"negative_prompt": "", "true_cfg_scale": guidance_scale} if guidance_scale > 1 else {}
    out = pipe(["a cat", "a dog a fox"], height=32, width=32, num_inference_steps=3, latents=packed,
               max_sequence_length=16, output_type="latent", **cfg).images
    assert torch.equal(policy.sampler.timesteps, pipe.scheduler.timesteps)
    theirs = QwenImagePipeline._unpack_latents(out, 32, 32, pipe.vae_scale_factor)[:, :, 0]
    torch.testing.assert_close(x, theirs, rtol=1e-4, atol=1e-5)


def test_decoding_is_the_pipelines(assets):
    from diffusers import QwenImagePipeline

    policy = DiffusionPolicy(**components(assets), num_steps=2, latent_size=8)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    pipe = QwenImagePipeline.from_pretrained(assets["qwen"])
    with torch.no_grad():
        ours = policy.decode(latents)
        images = pipe(["a cat"], height=32, width=32, num_inference_steps=1, max_sequence_length=16, output_type="pt",
                      latents=QwenImagePipeline._pack_latents(latents, 1, 4, 8, 8),
                      sigmas=[1e-6]).images  # one step from sigma ~0 leaves the latents as given
    assert ours.shape == (1, 3, 32, 32)
    torch.testing.assert_close(ours, images, rtol=1e-3, atol=1e-3)


def test_policy_on_qwen_image_recomputes_its_stored_log_probs(assets):
    policy = DiffusionPolicy(**components(assets), num_steps=3, guidance_scale=2.0, latent_size=8,
                             lora_target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                  "add_v_proj", "to_add_out"])
    traj = policy.sample(["a cat", "a dog a fox"], generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, 32, 32) and traj.log_probs.shape == (2, 3)
    assert_stored_log_probs_recompute(policy, ["a cat", "a dog a fox"])


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_on_qwen_image_and_its_lora_in_a_plain_pipeline(assets, tmp_path, algorithm):
    from diffusers import QwenImagePipeline

    run = tmp_path / "run"
    run_rlft(*sd_overrides(assets, model="qwen_image", pipeline="qwen"), "model.max_sequence_length=16",
             "policy.latent_size=8", *algorithm_run(algorithm), f"hydra.run.dir={run}",
             cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])

    pipe = QwenImagePipeline.from_pretrained(assets["qwen"])
    assert_lora_changes_the_pipeline(pipe, run / "lora", (1, 3, 32, 32), height=32, width=32, max_sequence_length=16,
                                     negative_prompt="", true_cfg_scale=4.0)
    assert_every_saved_layer_loads(pipe.transformer, run / "lora", "transformer.")
