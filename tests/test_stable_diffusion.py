"""The Stable Diffusion path on a tiny pipeline and a tiny CLIP that the tests save: the real
`from_pretrained` loaders, PPO and SEIKO through `model=stable_diffusion`, the aesthetic
reward, and LoRA weights that load into a plain diffusers pipeline."""

import pytest
import torch

from rlft.models.stable_diffusion import load_stable_diffusion
from rlft.rewards.aesthetic import AestheticScore, ClipImageFeatures
from tests.test_end_to_end import run_rlft
from tests.tiny_sd import save_tiny_aesthetic_head, save_tiny_clip, save_tiny_sd


def save_tiny_assets(root, pipelines: dict) -> dict:
    """The pipelines named in `pipelines` (name -> saver), a tiny CLIP and an aesthetic head."""
    return {**{name: save(root / name) for name, save in pipelines.items()},
            "clip": save_tiny_clip(root / "clip"), "head": save_tiny_aesthetic_head(root / "head.pth"), "root": root}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return save_tiny_assets(tmp_path_factory.mktemp("tiny_sd"), {"sd": save_tiny_sd})


def sd_overrides(assets, model: str = "stable_diffusion", pipeline: str = "sd") -> list[str]:
    """A one-epoch run of `model` on the tiny pipeline `assets[pipeline]`, the aesthetic reward
    and SEIKO's CLIP backbone on the tiny CLIP."""
    return [
        f"model={model}", f"model.pretrained={assets[pipeline]}", "model.dtype=float32", "policy.num_steps=2",
        "reward=aesthetic", f"reward.clip_path={assets['clip']}", f"reward.head_path={assets['head']}",
        f"model.reward_features.clip_path={assets['clip']}", "model.reward_feature_dim=8",
        "model.prompts.train=[a cat,a dog]", "model.prompts.eval=[a fox]", "data.samples_per_epoch=4",
        "algorithm.evaluation.samples_per_prompt=2", "trainer.max_epochs=1",
    ]


def test_ppo_runs_and_its_lora_loads_into_a_plain_pipeline(assets, tmp_path):
    from diffusers import StableDiffusionPipeline

    run = tmp_path / "run"
    run_rlft(*sd_overrides(assets), "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2",
             "algorithm.lr=0.05", "algorithm.clip_range=0.5", f"hydra.run.dir={run}", cwd=tmp_path)
    assert (run / "lora" / "pytorch_lora_weights.safetensors").is_file()

    # The manual's one-liner, on a plain diffusers pipeline.
    assert_lora_changes_the_pipeline(StableDiffusionPipeline.from_pretrained(assets["sd"]), run / "lora", (1, 3, 64, 64))


def assert_lora_changes_the_pipeline(pipe, lora_dir, shape, **call) -> None:
    """`pipe.load_lora_weights(lora_dir)` (the manual's one-liner, docs/models.md) changes what `pipe` draws."""
    draw = lambda: pipe(prompt="a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt",
                        **call).images
    base = draw()
    pipe.load_lora_weights(lora_dir)
    tuned = draw()
    assert base.shape == tuned.shape == shape
    assert (tuned - base).abs().max() > 1e-4, "the LoRA weights did not change the pipeline's output"


def test_seiko_runs_with_the_aesthetic_reward_and_clip_backbone(assets, tmp_path):
    run = tmp_path / "run"
    run_rlft(*sd_overrides(assets), "algorithm=seiko", "algorithm.queries_per_round=[4]", "algorithm.epochs_per_round=1",
             "algorithm.truncation_steps=1", "algorithm.train_batch_size=2", "algorithm.ensemble_epochs=2",
             f"hydra.run.dir={run}", cwd=tmp_path)
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_missing_or_malformed_model_directory_names_the_path(assets, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"model.pretrained='{tmp_path}/nowhere' is not a Stable Diffusion pipeline"):
        load_stable_diffusion(str(tmp_path / "nowhere"))
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing \['vae', 'text_encoder', 'tokenizer', 'scheduler'\]"):
        load_stable_diffusion(str(tmp_path / "partial"))


def test_a_head_that_does_not_fit_the_clip_names_both_paths(assets, tmp_path):
    wrong = save_tiny_aesthetic_head(tmp_path / "head768.pth", input_dim=768)
    with pytest.raises(ValueError, match=f"reward.head_path='{wrong}' does not fit reward.clip_path='{assets['clip']}'"):
        AestheticScore(str(assets["clip"]), str(wrong))


def test_aesthetic_reward_is_differentiable_in_the_images(assets):
    reward = AestheticScore(str(assets["clip"]), str(assets["head"]))
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    reward(images, ["a", "b"]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_loaded_components_are_frozen_and_lora_is_float32(assets):
    from rlft.diffusion.policy import DiffusionPolicy

    components = load_stable_diffusion(str(assets["sd"]), dtype="bfloat16")
    policy = DiffusionPolicy(**components, num_steps=2)
    vae = components["model"].vae
    assert vae.dtype == torch.bfloat16 and not any(p.requires_grad for p in vae.parameters())
    trainable = policy.trainable_parameters()
    assert trainable and all(p.dtype == torch.float32 and "lora" in n for n, p in policy.denoiser.named_parameters() if p.requires_grad)
    assert policy.denoiser.conv_in.weight.dtype == torch.bfloat16


def test_the_reward_its_evaluation_copy_and_the_ensemble_backbone_share_one_clip(assets):
    """Three instances, as SEIKO's config builds them (oracle, evaluation reward, backbone)."""
    from rlft.run.train import build
    from tests.test_config import compose_cfg

    cfg = compose_cfg([*sd_overrides(assets), "algorithm=seiko", "algorithm.truncation_steps=1"])
    module, _, _ = build(cfg)
    clips = {id(module.oracle.backbone.clip), id(module.evaluation.reward_fn.backbone.clip),
             id(module.ensemble.backbone.clip)}
    assert len(clips) == 1
    other_dtype = ClipImageFeatures(str(assets["clip"]), "bfloat16")
    assert id(other_dtype.clip) not in clips  # another dtype is another model


def saved_layers_of(lora_dir) -> set[str]:
    from safetensors.torch import load_file

    return {k.split(".lora")[0] for k in load_file(lora_dir / "pytorch_lora_weights.safetensors")}


def assert_every_saved_layer_loads(denoiser, lora_dir, prefix: str) -> None:
    """Each layer of the exported LoRA is adapted in the pipeline's `denoiser` after `load_lora_weights`."""
    from peft.utils import get_peft_model_state_dict

    saved = saved_layers_of(lora_dir)
    adapter = next(iter(denoiser.peft_config))
    loaded = {k.split(".lora")[0] for k in get_peft_model_state_dict(denoiser, adapter_name=adapter)}
    assert saved and loaded == {k.removeprefix(prefix) for k in saved}


def assert_stored_log_probs_recompute(policy, prompts: list[str]) -> None:
    """With the LoRA moved off zero, each stored transition's log-probability recomputes bit for bit."""
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    traj = policy.sample(prompts, generator=torch.Generator().manual_seed(0))
    for j in range(traj.log_probs.shape[1]):
        recomputed = policy.log_prob(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
        assert torch.equal(recomputed, traj.log_probs[:, j])


def algorithm_run(algorithm: str) -> list[str]:
    """A one-epoch run of PPO or GRPO (groups of 2) on a tiny pipeline, with steps large enough to move."""
    group = ["algorithm.group_size=2"] if algorithm == "grpo" else []
    return [f"algorithm={algorithm}", *group, "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2",
            "algorithm.lr=0.05", "algorithm.clip_range=0.5"]
