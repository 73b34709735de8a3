"""FLUX.2 [klein] on a tiny Flux2KleinPipeline the tests save (a 3-layer Qwen3 with a chat
template, a 1+1-block FLUX.2 transformer, a FLUX.2 VAE with batch-norm statistics): the real
loaders; Qwen3 prompt encoding, the patchified latents, 4-d ids, t / 1000, the empirical shift,
CFG and the batch-norm un-normalisation against the pipeline's own loop; PPO and GRPO through
`model=flux2_klein_4b`, and LoRA that loads into a plain Flux2KleinPipeline."""

import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.flux2 import load_flux2_klein
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import (algorithm_run, assert_every_saved_layer_loads,
                                         assert_lora_changes_the_pipeline, assert_stored_log_probs_recompute,
                                         save_tiny_assets, sd_overrides)
from tests.tiny_sd import save_tiny_flux2_klein

TINY = {"max_sequence_length": 16, "text_encoder_out_layers": (1, 2, 3)}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_klein"), {"klein": save_tiny_flux2_klein})


def unnormalised(policy, latents):
    """What Flux2KleinPipeline returns for output_type="latent": un-normalised and unpatchified."""
    from diffusers import Flux2KleinPipeline

    bn, eps = policy.model.vae.bn, policy.model.vae.config.batch_norm_eps
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps)
    return Flux2KleinPipeline._unpatchify_latents(latents * std + bn.running_mean.view(1, -1, 1, 1))


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_the_policys_ode_chain_is_the_pipelines_loop(assets, guidance_scale):
    from diffusers import Flux2KleinPipeline

    policy = DiffusionPolicy(**load_flux2_klein(str(assets["klein"]), dtype="float32", **TINY), num_steps=3,
                             guidance_scale=guidance_scale, lora_rank=None, latent_size=4)
    noise = policy.initial_latents(2, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 16, 4, 4)  # patchified: 4 x 4 channels, 16x16 VAE latents in 2x2 patches
    x = noise
    with torch.no_grad():
        embeds = policy.encode_prompts(["a cat", "a dog"])
        for t in policy.sampler.timesteps:
            x = policy.sampler.ode_step(policy.predict(x, t, embeds), t, x)
    pipe = Flux2KleinPipeline.from_pretrained(assets["klein"])
    out = pipe(prompt=["a cat", "a dog"], height=16, width=16, num_inference_steps=3, guidance_scale=guidance_scale,
               latents=noise, output_type="latent", **TINY).images
    assert torch.equal(policy.sampler.timesteps, pipe.scheduler.timesteps)
    torch.testing.assert_close(unnormalised(policy, x), out, rtol=1e-5, atol=1e-5)


def test_decoding_un_normalises_by_the_vaes_batch_norm_statistics(assets):
    policy = DiffusionPolicy(**load_flux2_klein(str(assets["klein"]), dtype="float32", **TINY), num_steps=2, latent_size=4)
    latents = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = policy.decode(latents)
        theirs = ((policy.model.vae.decode(unnormalised(policy, latents)).sample + 1) / 2).clamp(0, 1)
    assert ours.shape == (1, 3, 16, 16) and torch.equal(ours, theirs)


def test_stored_log_probs_recompute_exactly(assets):
    policy = DiffusionPolicy(**load_flux2_klein(str(assets["klein"]), dtype="float32", **TINY), num_steps=3,
                             guidance_scale=2.0, latent_size=4)
    assert_stored_log_probs_recompute(policy, ["a cat", "a dog"])


def test_a_distilled_checkpoint_samples_one_branch(tmp_path):
    distilled = save_tiny_flux2_klein(tmp_path / "distilled", is_distilled=True)
    components = load_flux2_klein(str(distilled), dtype="float32", **TINY)
    with pytest.raises(ValueError, match=r"policy.guidance_scale=4.0 is invalid: this model is step-distilled"):
        DiffusionPolicy(**components, num_steps=2, guidance_scale=4.0, latent_size=4)  # the pipeline would ignore it
    policy = DiffusionPolicy(**components, num_steps=2, guidance_scale=1.0, latent_size=4)
    assert not policy.batched_guidance
    assert policy.sample(["a cat"]).images.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_on_flux2_klein_and_its_lora_in_a_plain_pipeline(assets, tmp_path, algorithm):
    from diffusers import Flux2KleinPipeline

    run = tmp_path / "run"
    run_rlft(*sd_overrides(assets, model="flux2_klein_4b", pipeline="klein"), "model.max_sequence_length=16",
             "model.text_encoder_out_layers=[1,2,3]", "policy.latent_size=4", *algorithm_run(algorithm),
             f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    pipe = Flux2KleinPipeline.from_pretrained(assets["klein"])
    assert_lora_changes_the_pipeline(pipe, run / "lora", (1, 3, 16, 16), height=16, width=16, guidance_scale=1.0, **TINY)
    assert_every_saved_layer_loads(pipe.transformer, run / "lora", "transformer.")
