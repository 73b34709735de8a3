"""Stable Diffusion XL on a tiny StableDiffusionXLPipeline the tests save: the real loaders;
both text encoders, pooled embeddings, add_time_ids and the empty prompt's zeros against the
pipeline's own DDIM loop; DDPO (PPO) and GRPO through `model=sdxl`, and LoRA weights that load
into a plain `StableDiffusionXLPipeline`."""

import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.sdxl import load_sdxl
from rlft.models.stable_diffusion import load_stable_diffusion
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import (algorithm_run, assert_every_saved_layer_loads,
                                         assert_lora_changes_the_pipeline, assert_stored_log_probs_recompute,
                                         save_tiny_assets, sd_overrides)
from tests.tiny_sd import save_tiny_sdxl


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_sdxl"), {"sdxl": save_tiny_sdxl})


def test_the_policys_deterministic_chain_is_the_pipelines_ddim_loop(assets):
    """rlft's chain with eta = 0 (its ODE step) equals StableDiffusionXLPipeline's loop under
    DDIMScheduler from the same noise: prompt encoding by both CLIPs, the unconditional branch's
    zeros, pooled `text_embeds`, `add_time_ids` and CFG."""
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    components = load_sdxl(str(assets["sdxl"]), dtype="float32")
    policy = DiffusionPolicy(**components, num_steps=4, guidance_scale=3.0, lora_rank=None)
    assert policy.uncond_tokens.abs().sum() == 0 and policy.uncond_pooled.abs().sum() == 0  # force_zeros_for_empty_prompt
    noise = policy.initial_latents(2, torch.Generator().manual_seed(0))
    x = noise
    with torch.no_grad():
        embeds = policy.encode_prompts(["a cat", "a dog"])
        assert embeds.tokens.shape == (2, 16, 32) and embeds.pooled.shape == (2, 16)
        for t in policy.sampler.timesteps:
            x = policy.sampler.ode_step(policy.predict(x, t, embeds), t, x)

    pipe = StableDiffusionXLPipeline.from_pretrained(assets["sdxl"])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False)  # as load_sdxl
    theirs = pipe(["a cat", "a dog"], height=32, width=32, num_inference_steps=4, guidance_scale=3.0, eta=0.0,
                  latents=noise, output_type="latent").images
    torch.testing.assert_close(x, theirs, rtol=1e-5, atol=1e-5)


def test_policy_on_sdxl_recomputes_its_stored_log_probs(assets):
    policy = DiffusionPolicy(**load_sdxl(str(assets["sdxl"]), dtype="float32"), num_steps=3, guidance_scale=2.0)
    assert policy.family == "ddim"
    traj = policy.sample(["a cat", "a dog"], generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, 32, 32) and traj.log_probs.shape == (2, 3)
    assert_stored_log_probs_recompute(policy, ["a cat", "a dog"])


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_on_sdxl_and_its_lora_in_a_plain_sdxl_pipeline(assets, tmp_path, algorithm):
    from diffusers import StableDiffusionXLPipeline

    run = tmp_path / "run"
    run_rlft(*sd_overrides(assets, model="sdxl", pipeline="sdxl"), *algorithm_run(algorithm), f"hydra.run.dir={run}",
             cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])

    pipe = StableDiffusionXLPipeline.from_pretrained(assets["sdxl"])
    assert_lora_changes_the_pipeline(pipe, run / "lora", (1, 3, 32, 32), height=32, width=32)
    assert_every_saved_layer_loads(pipe.unet, run / "lora", "unet.")


def test_a_pipeline_of_another_family_is_refused(assets):
    with pytest.raises(ValueError, match=r"holds a StableDiffusionXLPipeline, not a StableDiffusionPipeline.*model=sdxl"):
        load_stable_diffusion(str(assets["sdxl"]))
