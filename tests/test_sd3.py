"""The Stable Diffusion 3 path on a tiny SD3 pipeline the tests save (two CLIPs, a T5, a
1-layer SD3 transformer, a VAE with SD3's shift): the real `from_pretrained` loaders, the
pipeline's own prompt encoding, PPO and SEIKO through `model=sd3`, and LoRA weights that load
into a plain `StableDiffusion3Pipeline`."""

import json
import math

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.sd3 import load_sd3
from rlft.models.stable_diffusion import load_stable_diffusion
from rlft.tools.tensorboard import read_scalars
from tests.test_end_to_end import run_rlft
from tests.test_stable_diffusion import assert_lora_changes_the_pipeline, save_tiny_assets, sd_overrides
from tests.tiny_sd import save_tiny_sd, save_tiny_sd3

TRANSFORMER_LORA = "[to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out]"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_sd3"), {"sd3": save_tiny_sd3})


def sd3_overrides(assets) -> list[str]:
    return [*sd_overrides(assets, model="sd3", pipeline="sd3"), "model.max_sequence_length=8"]


def test_prompts_are_encoded_by_the_pipelines_own_encode_prompt(assets):
    from diffusers import StableDiffusion3Pipeline

    components = load_sd3(str(assets["sd3"]), dtype="float32", max_sequence_length=8)
    ours = components["model"].encode_prompts(["a cat", "a dog"])
    pipe = StableDiffusion3Pipeline.from_pretrained(assets["sd3"])
    with torch.no_grad():  # as rlft encodes (attention kernels differ with autograd on)
        tokens, _, pooled, _ = pipe.encode_prompt(["a cat", "a dog"], None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=8)
    assert torch.equal(ours.tokens, tokens) and torch.equal(ours.pooled, pooled)
    assert ours.tokens.shape == (2, 16 + 8, 32) and ours.pooled.shape == (2, 32)  # CLIP tokens + T5 tokens


def test_the_vae_may_decode_in_float32_beside_bfloat16_weights(assets):
    """model.vae_dtype=float32, as flow_grpo and DiffusionNFT decode; the rest stays in model.dtype."""
    components = load_sd3(str(assets["sd3"]), dtype="bfloat16", max_sequence_length=8, vae_dtype="float32")
    model = components["model"]
    assert next(model.vae.parameters()).dtype == torch.float32
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16
    latents = torch.randn(1, model.vae.config.latent_channels, 8, 8, dtype=torch.bfloat16)
    assert model.decode(latents).dtype == torch.float32
    with pytest.raises(ValueError, match=r"model.vae_dtype='float64' is invalid"):
        load_sd3(str(assets["sd3"]), vae_dtype="float64")


def test_t5_is_optional(assets):
    components = load_sd3(str(assets["sd3"]), dtype="float32", use_t5=False, max_sequence_length=8)
    assert components["model"].text_encoder_3 is None
    embeds = DiffusionPolicy(**components, num_steps=2).encode_prompts(["a cat"])
    assert embeds.tokens.shape == (1, 24, 32) and embeds.tokens[:, 16:].abs().sum() == 0  # T5's place is zeros


def test_policy_on_sd3_recomputes_its_stored_log_probs_and_trains_only_lora(assets):
    components = load_sd3(str(assets["sd3"]), dtype="bfloat16", max_sequence_length=8)
    policy = DiffusionPolicy(**components, num_steps=3, guidance_scale=2.0,
                             lora_target_modules=TRANSFORMER_LORA.strip("[]").split(","))
    assert policy.family == "flow"
    trainable = [n for n, p in policy.denoiser.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
    assert any("add_q_proj" in n for n in trainable)  # the text stream of joint attention too
    assert policy.denoiser.pos_embed.proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    traj = policy.sample(["a cat", "a dog"], generator=torch.Generator().manual_seed(0))
    assert traj.images.shape == (2, 3, 32, 32) and traj.log_probs.shape == (2, 3)
    for j in range(3):
        recomputed = policy.log_prob(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
        assert torch.equal(recomputed, traj.log_probs[:, j])


def test_ppo_runs_and_its_lora_loads_into_a_plain_sd3_pipeline(assets, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    run = tmp_path / "run"
    run_rlft(*sd3_overrides(assets), "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2",
             "algorithm.lr=0.05", "algorithm.clip_range=0.5", f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/loss"] + scalars["reward/mean"])
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()

    pipe = StableDiffusion3Pipeline.from_pretrained(assets["sd3"])
    assert_lora_changes_the_pipeline(pipe, run / "lora", (1, 3, 32, 32), max_sequence_length=8)
    # Every adapted projection of the run is adapted in the pipeline (7 in the tiny transformer's one
    # block: to_add_out does not exist in a last, context-pre-only block).
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    saved = {k.split(".lora")[0] for k in load_file(run / "lora" / "pytorch_lora_weights.safetensors")}
    adapter = next(iter(pipe.transformer.peft_config))
    loaded = {k.split(".lora")[0] for k in get_peft_model_state_dict(pipe.transformer, adapter_name=adapter)}
    assert len(saved) == 7 and loaded == {k.removeprefix("transformer.") for k in saved}


def test_seiko_runs_on_sd3_without_t5(assets, tmp_path):
    run = tmp_path / "run"
    run_rlft(*sd3_overrides(assets), "model.use_t5=false", "algorithm=seiko", "algorithm.queries_per_round=[4]",
             "algorithm.epochs_per_round=1", "algorithm.truncation_steps=1", "algorithm.train_batch_size=2",
             "algorithm.ensemble_epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert all(math.isfinite(v) for _, v in scalars["train/kl"] + scalars["eval/oracle_reward"])
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_pipeline_of_the_other_family_is_refused_naming_both(assets, tmp_path):
    sd = save_tiny_sd(tmp_path / "sd")
    with pytest.raises(ValueError, match=r"holds a StableDiffusionPipeline, not a StableDiffusion3Pipeline.*model=stable_diffusion"):
        load_sd3(str(sd))
    with pytest.raises(ValueError, match=r"holds a StableDiffusion3Pipeline, not a StableDiffusionPipeline.*model=sd3"):
        load_stable_diffusion(str(assets["sd3"]))


def test_a_pipeline_without_t5_asks_for_use_t5_false(assets, tmp_path):
    import shutil

    partial = tmp_path / "no_t5"
    shutil.copytree(assets["sd3"], partial, ignore=shutil.ignore_patterns("text_encoder_3", "tokenizer_3"))
    with pytest.raises(FileNotFoundError, match=r"missing \['text_encoder_3', 'tokenizer_3'\] \(or model.use_t5=false"):
        load_sd3(str(partial))
    assert json.loads((partial / "model_index.json").read_text())["_class_name"] == "StableDiffusion3Pipeline"
