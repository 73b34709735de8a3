"""FLUX.1 on a tiny FluxPipeline the tests save (a tiny CLIP, T5, a 1+1-block transformer, a VAE
with a shift): the real loaders; prompts, packing, ids, the guidance embedding, `t / 1000` and
the dynamic shift against FluxPipeline's own denoising loop; PPO and GRPO through `model=flux_dev`,
and LoRA weights that load into a plain `FluxPipeline`."""

import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.flux import load_flux
from rlft.models.sd3 import load_sd3
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import (algorithm_run, assert_every_saved_layer_loads,
                                         assert_lora_changes_the_pipeline, assert_stored_log_probs_recompute,
                                         save_tiny_assets, sd_overrides)
from tests.tiny_sd import save_tiny_flux


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_flux"), {"flux": save_tiny_flux})


def flux_overrides(assets, model: str = "flux_dev") -> list[str]:
    return [*sd_overrides(assets, model=model, pipeline="flux"), "model.max_sequence_length=8"]


@pytest.mark.parametrize("guidance_scale", [3.5, 1.0])
def test_the_policys_ode_chain_is_fluxpipelines_denoising_loop(assets, guidance_scale):
    """Every step of rlft's sampler, ODE-stepped, equals FluxPipeline's own loop from the same
    noise: prompt encoding, packing and ids, the guidance embedding, t / 1000, the dynamic shift."""
    from diffusers import FluxPipeline

    components = load_flux(str(assets["flux"]), dtype="float32", max_sequence_length=8)
    policy = DiffusionPolicy(**components, num_steps=4, guidance_scale=guidance_scale, lora_rank=None)
    assert policy.model.guidance == "embedded" and not policy.batched_guidance  # one branch a step
    noise = policy.initial_latents(2, torch.Generator().manual_seed(0))
    assert noise.shape == (2, 4, 8, 8)
    x = noise
    with torch.no_grad():
        embeds = policy.encode_prompts(["a cat", "a dog"])
        for t in policy.sampler.timesteps:
            x = policy.sampler.ode_step(policy.predict(x, t, embeds), t, x)

    pipe = FluxPipeline.from_pretrained(assets["flux"])
    packed = FluxPipeline._pack_latents(noise, 2, 4, 8, 8)
    out = pipe(["a cat", "a dog"], height=32, width=32, num_inference_steps=4, guidance_scale=guidance_scale,
               latents=packed, max_sequence_length=8, output_type="latent").images
    assert torch.equal(policy.sampler.timesteps, pipe.scheduler.timesteps)  # sigmas and mu as the pipeline's
    theirs = FluxPipeline._unpack_latents(out, 32, 32, pipe.vae_scale_factor)
    torch.testing.assert_close(x, theirs, rtol=1e-5, atol=1e-5)


def test_policy_on_flux_recomputes_its_stored_log_probs_and_trains_only_lora(assets):
    components = load_flux(str(assets["flux"]), dtype="float32", max_sequence_length=8)
    policy = DiffusionPolicy(**components, num_steps=3, guidance_scale=3.5,
                             lora_target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                  "add_v_proj", "to_add_out"])
    assert policy.family == "flow"
    trainable = [n for n, p in policy.denoiser.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    assert any("single_transformer_blocks" in n for n in trainable)  # the single-stream blocks' attention too
    traj = policy.sample(["a cat", "a dog"], generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, 32, 32) and traj.log_probs.shape == (2, 3)
    assert_stored_log_probs_recompute(policy, ["a cat", "a dog"])


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_on_flux_dev_learns_and_its_lora_loads_into_a_plain_flux_pipeline(assets, tmp_path, algorithm):
    from diffusers import FluxPipeline

    run = tmp_path / "run"
    run_rlft(*flux_overrides(assets), *algorithm_run(algorithm), f"hydra.run.dir={run}",
             cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    # one denoiser call per sample and step: the guidance embedding, no CFG branch (4 samples x 2 steps, sampled 1 +
    # trained 3, and GRPO's forward of the base for its KL 1)
    assert scalars["work/unet_evals"][-1][1] == 4 * 2 * (1 + 3 + (algorithm == "grpo"))

    pipe = FluxPipeline.from_pretrained(assets["flux"])
    assert_lora_changes_the_pipeline(pipe, run / "lora", (1, 3, 32, 32), height=32, width=32, max_sequence_length=8)
    assert_every_saved_layer_loads(pipe.transformer, run / "lora", "transformer.")


def test_flux_schnell_has_no_guidance_embedding(assets, tmp_path):
    schnell = save_tiny_flux(tmp_path / "schnell", guidance_embeds=False)
    policy = DiffusionPolicy(**load_flux(str(schnell), dtype="float32", max_sequence_length=8), num_steps=2,
                             guidance_scale=1.0)
    assert policy.model.guidance == "cfg" and not policy.batched_guidance
    assert policy.sample(["a cat"]).images.shape == (1, 3, 32, 32)


def test_a_pipeline_of_another_family_is_refused_naming_both(assets, tmp_path):
    from tests.tiny_sd import save_tiny_sd3

    with pytest.raises(ValueError, match=r"holds a FluxPipeline, not a StableDiffusion3Pipeline.*model=flux_dev"):
        load_sd3(str(assets["flux"]))
    with pytest.raises(ValueError, match=r"holds a StableDiffusion3Pipeline, not a FluxPipeline.*model=sd3"):
        load_flux(str(save_tiny_sd3(tmp_path / "sd3")))
    with pytest.raises(ValueError, match=r"policy.latent_size=7 is invalid: FLUX packs 2x2"):
        DiffusionPolicy(**load_flux(str(assets["flux"]), dtype="float32", max_sequence_length=8), latent_size=7)
