import shlex
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rlft.run.config import CONFIG_DIR
from rlft.run.train import build
from rlft.run.validation import ConfigError, validate, world_size
from tests.manual import page

GROUPS = {  # every option of every group of the main app
    group: sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
    for group in ("model", "algorithm", "reduction", "reward", "aggregation", "ensemble", "trainer")
}


REQUIRED = {  # options with a value only the user can give (`???`)
    "stable_diffusion": ["model.pretrained=/path/to/pipeline", "model.dtype=float32"],
    "sd15": ["model.dtype=float32"],  # float16 weights need a GPU
    "sd21": ["model.dtype=float32"],
    "flux": ["model.pretrained=/path/to/pipeline"],
    "wan": ["model.pretrained=/path/to/pipeline"],
    "aesthetic": ["reward.head_path=/path/to/head.pth"],
    "multi": ["reward.components={compressibility:1.0,digit_alignment:0.1}"],
    "hpsv2": ["reward.model_path=/path/to/converted/hpsv2.1"],
    "imagereward": ["reward.model_path=/path/to/converted/imagereward"],
    "vlm_judge": ["reward.base_url=http://127.0.0.1:8000/v1"],
    "ocr": ["model.prompts.train=${prompt_set:ocr_signs}", "model.prompts.eval=${prompt_set:ocr_signs_eval}"],  # composes and validates; nothing is asked
    "geneval": ["model.prompts.train=${prompt_set:geneval_train}", "model.prompts.eval=${prompt_set:geneval_eval}"],
}


def compose_cfg(overrides=(), output_dir="/tmp/rlft-test"):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"hydra.runtime.output_dir={output_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # so that ${hydra:...} resolves as in a real run
    return cfg


def test_groups_are_not_empty():
    assert all(GROUPS.values()), GROUPS
    assert set(GROUPS["reduction"]) == {"mean", "sum"}


@pytest.mark.parametrize("algorithm", GROUPS["algorithm"])
@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_option_composes_resolves_and_validates(group, option, algorithm):
    # DiffusionNFT and AWM: a flow model, sampled without guidance; on a DDIM model they must be refused.
    chosen = option if group == "algorithm" else algorithm
    needs = (["model=digits_flow"] if group != "model" else []) + ["model.guidance_scale=1"] if chosen in ("nft", "awm") else []
    if chosen == "awm" and group == "model" and option in ("flux_schnell", "flux2_klein_4b"):
        needs.append("algorithm.train_timesteps=2")  # 4-step models: AWM's 6 training times exceed their steps
    cfg = compose_cfg([f"algorithm={algorithm}", *needs, f"{group}={option}", *REQUIRED.get(option, [])])
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves, as train() logs them all
    if group == "reward" and option == "ensemble" and algorithm == "seiko":
        with pytest.raises(ConfigError, match="reward=ensemble is a learned reward for the sampling-based algorithms"):
            validate(cfg)
        return
    if chosen == "seiko" and "num_frames" in cfg.model:  # a video model: SEIKO's reward backpropagation is image-only
        with pytest.raises(ConfigError, match="SEIKO backpropagates an image reward model through the sampler"):
            validate(cfg)
        return
    if chosen in ("nft", "awm") and cfg.model.get("family", "ddim") != "flow":
        with pytest.raises(ConfigError, match="trains rectified-flow models"):
            validate(cfg)
        return
    if group == "trainer" and option == "fsdp2" and algorithm == "seiko":
        with pytest.raises(ConfigError, match="algorithm='seiko' is invalid: does not train sharded yet"):
            validate(cfg)
        return
    validate(cfg)


@pytest.mark.parametrize("option", GROUPS["reward"])
def test_every_reward_instantiates_and_scores(option, tmp_path):
    overrides = [f"reward={option}"]
    if option == "http":  # a local service to answer it
        from tests.test_http_reward import FlakyRewardServer

        overrides.append(f"reward.url={FlakyRewardServer(failures=0).url}")
    if option == "aesthetic":  # a tiny CLIP and head, saved here
        from tests.tiny_sd import save_tiny_aesthetic_head, save_tiny_clip

        overrides += [f"reward.clip_path={save_tiny_clip(tmp_path / 'clip')}",
                      f"reward.head_path={save_tiny_aesthetic_head(tmp_path / 'head.pth')}"]
    if option in ("pickscore", "clipscore", "hpsv2"):  # a tiny CLIP with its processor, saved here
        from tests.tiny_sd import save_tiny_clip

        clip = save_tiny_clip(tmp_path / "clip")
        overrides += [f"reward.model_path={clip}", f"reward.processor_path={clip}", "+reward.max_length=16"]
    if option == "ocr":  # tiny PP-OCRv5 models saved here
        from tests.test_ocr import save_tiny_ocr

        det, rec = save_tiny_ocr(tmp_path)
        overrides += [f"reward.detection_path={det}", f"reward.recognition_path={rec}"]
    if option == "imagereward":  # a tiny ImageReward checkpoint, converted here
        from rlft.rewards.convert import convert_imagereward
        from tests.test_imagereward import imagereward_checkpoint, save_tiny_blip_config

        config = save_tiny_blip_config(tmp_path / "blip")
        torch.save(imagereward_checkpoint(config), tmp_path / "ImageReward.pt")
        overrides += [f"reward.model_path={convert_imagereward(str(tmp_path / 'ImageReward.pt'), str(config), str(tmp_path / 'ir'))}"]
    if option == "geneval":  # a tiny Mask2Former and CLIP saved here
        from tests.test_geneval import save_two_cats_detector
        from tests.tiny_sd import save_tiny_clip

        overrides += [f"reward.detector_path={save_two_cats_detector(tmp_path / 'm2f')}",
                      f"reward.clip_path={save_tiny_clip(tmp_path / 'clip')}"]
    if option == "vlm_judge":  # a local OpenAI-compatible server to answer it
        from tests.test_vlm_judge import FakeJudge

        overrides += [f"reward.base_url={FakeJudge().url}", "reward.image_size=16"]
    overrides += REQUIRED.get(option, []) if option == "multi" else []
    reward = instantiate(compose_cfg(overrides).reward)
    images = torch.rand(3, 1, 16, 16)
    if option == "ensemble":  # a learned reward answers once fitted on its oracle's answers
        prompts = ["a handwritten 1"] * 3
        reward.fit(0, reward.model.features(images), reward.oracle(images, prompts))
    prompts = ["a handwritten 1", "a handwritten 2", "the number three"]
    if option == "vlm_judge":
        prompts = ["a good 1", "a good 2", "a good 3"]  # FakeJudge's word for an answer with a score
    if option == "ocr":
        prompts = ['a "b" sign', 'a "c" sign', 'a "bc" sign']  # the tiny reader reads "b"
    if option == "geneval":
        prompts = ["a photo of a bench", "a photo of two clocks", "a photo of a pink car"]  # GenEval's own, shipped
    rewards = torch.as_tensor(reward(images, prompts))
    assert rewards.shape == (3,) and torch.isfinite(rewards).all()


@pytest.mark.parametrize("reduction", GROUPS["reduction"])
def test_reduction_group_sets_the_policy(reduction):
    assert compose_cfg([f"reduction={reduction}"]).policy.reduction == reduction


def test_default_config_builds_module_data_and_trainer(tmp_path):
    module, data, trainer = build(compose_cfg(output_dir=str(tmp_path)))
    assert module.policy.reduction == "mean" and len(data.train_prompts) == 10
    assert Path(trainer.logger.log_dir) == tmp_path


@pytest.mark.parametrize(
    "override,valid",
    [("reduction=avg", ["mean", "sum"]), ("algorithm=dpo", ["ppo"]), ("reward=aesthetics", ["compressibility"])],
)
def test_unknown_option_fails_at_composition_with_the_choices(override, valid):
    with pytest.raises((ConfigCompositionException, MissingConfigException)) as info:
        compose_cfg([override])
    message = str(info.value)
    assert override.split("=")[1] in message and all(v in message for v in valid)


@pytest.mark.parametrize(
    "override,setting",
    [
        ("algorithm.clip_range=-1", "algorithm.clip_range=-1"),
        ("policy.eta=0", "policy.eta=0"),
        ("algorithm.timestep_fraction=1.5", "algorithm.timestep_fraction"),
        ("algorithm.train_batch_size=24", "algorithm.train_batch_size=24"),
        ("algorithm.gradient_accumulation_steps=3", "algorithm.gradient_accumulation_steps=3"),
        ("policy.guidance_scale=0.5", "policy.guidance_scale"),
    ],
)
def test_invalid_values_fail_before_any_work(override, setting):
    with pytest.raises(ConfigError, match=setting.replace(".", r"\.")):
        validate(compose_cfg([override]))


@pytest.mark.parametrize(
    "overrides,setting",
    [
        (["policy.noise_level=0.5"], "policy.noise_level=0.5 is invalid: is a flow-model setting, and model=digits is a ddim model"),
        (["model=digits_flow", "policy.eta=1.0"], "policy.eta=1.0 is invalid: is a DDIM-model setting"),
        (["model=digits_flow", "policy.noise_level=0"], "policy.noise_level=0 is invalid: must be > 0"),
        (["model=digits_flow", "policy.sde_window=[2,30]"], r"policy.sde_window=\[2, 30\] is invalid"),
        (["policy.sde_window=[3,3]"], r"policy.sde_window=\[3, 3\] is invalid: must be \[start, stop\]"),
        (["model=sd35_medium", "policy.eta=0.5"], "policy.eta=0.5 is invalid: is a DDIM-model setting, and model=sd35_medium"),
    ],
)
def test_a_sampler_setting_of_the_wrong_family_or_range_fails_at_start(overrides, setting):
    with pytest.raises(ConfigError, match=setting):
        validate(compose_cfg(overrides))


def test_a_model_directory_of_the_other_family_is_refused(tmp_path, tiny_flow_model_dir):
    with pytest.raises(ConfigError, match=r"holds a flow model \(its scheduler is FlowMatchEulerDiscreteScheduler\), "
                                          r"but model=digits declares model.family=ddim"):
        build(compose_cfg([f"model.pretrained={tiny_flow_model_dir}"], output_dir=str(tmp_path)))


def test_sde_window_reaches_the_policy(tmp_path):
    module, _, _ = build(compose_cfg(["model=digits_flow", "policy.sde_window=[0,4]"], output_dir=str(tmp_path)))
    assert module.policy.family == "flow" and list(module.policy.sampler.window) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "overrides,match",
    [(["aggregation=softmax", "aggregation.temperature=0"], "temperature=0"), (["aggregation=ucb", "aggregation.kappa=-1"], "kappa=-1"),
     (["aggregation=lcb", "aggregation.kappa=-0.5"], "kappa=-0.5")],
)
def test_invalid_aggregation_fails_at_start(overrides, match):
    with pytest.raises(Exception, match=match):
        validate(compose_cfg(overrides))


def test_prompt_the_model_cannot_encode_fails_in_build(tmp_path):
    cfg = compose_cfg(['model.prompts.train=["a handwritten dog"]'], output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dog"):
        build(cfg)


# The papers' settings, for a GPU user: single runs (no sweep) on prompt files only the user has.
PUBLISHED_SETTINGS = {
    "flow_grpo_pickscore_sd35": [],
    "flow_grpo_ocr_sd35": ["model.prompts.train=${prompt_set:ocr_signs}", "model.prompts.eval=${prompt_set:ocr_signs_eval}"],
    "flow_grpo_geneval_sd35": ["model.prompts.train=${prompt_set:geneval_train}", "model.prompts.eval=${prompt_set:geneval_eval}"],
    "diffusionnft_multi_reward_sd35": ["+reward.settings.hpsv2.model_path=/path/to/converted/hpsv2.1"],
}
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml") if p.stem not in PUBLISHED_SETTINGS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_its_sweep(experiment):
    cfg = compose_cfg([f"+experiment={experiment}"])
    validate(cfg)
    assert cfg.hydra.sweeper.params, f"experiment {experiment} sweeps nothing"


@pytest.mark.parametrize("experiment", ["flow_grpo_pickscore_sd35", "diffusionnft_multi_reward_sd35"])
def test_a_preset_without_its_prompt_files_fails_at_composition_naming_them(experiment):
    """A preset's required prompts replace the model's (a `???` merged over a list would keep the
    list: these presets trained on DDPO's animal prompts without a word)."""
    needs = PUBLISHED_SETTINGS[experiment]
    for given, missing in (([], "train"), (["model.prompts.train=[a cat]"], "eval")):
        with pytest.raises(ConfigError, match=rf"model\.prompts\.{missing} is required by \+experiment={experiment}: give "
                                              rf"its prompt file, model\.prompts\.{missing}='\$\{{prompt_set:/path/to/"):
            validate(compose_cfg([f"+experiment={experiment}", *needs, *given, "model.dtype=float32"]))


@pytest.mark.parametrize("experiment,needs", sorted(PUBLISHED_SETTINGS.items()))
def test_the_papers_settings_compose_and_validate_with_prompt_files(experiment, needs, tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.txt").write_text(f"a {split} prompt\nanother {split} prompt\n")
    files = [f"model.prompts.train=${{prompt_set:{tmp_path}/train.txt}}", f"model.prompts.eval=${{prompt_set:{tmp_path}/test.txt}}"]
    own_prompts = any(n.startswith("model.prompts") for n in needs)  # OCR and GenEval prompts need quotes, metadata
    cfg = compose_cfg([f"+experiment={experiment}", *(needs if own_prompts else [*needs, *files]), "model.dtype=float32"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    validate(cfg)
    if not own_prompts:
        assert resolved["model"]["prompts"]["train"] == ["a train prompt", "another train prompt"]
    if experiment.startswith("flow_grpo"):  # flow_grpo's KL and advantages in its own forms, its detached CFG branch
        assert resolved["policy"]["cfg_gradient"] == "conditional"
        a = resolved["algorithm"]
        assert (a["kl_form"], a["global_std"], a["kl_weight"]) == ("without_dt", True, 0.01 if "pickscore" in experiment else 0.04)
    assert resolved["model"]["name"] == "sd35_medium" and resolved["policy"]["lora_rank"] == 32
    assert resolved["data"]["samples_per_epoch"] == 1152 and resolved["algorithm"]["group_size"] == 24
    # As the public scripts encode, decode and evaluate: T5's 128 tokens, a float32 VAE, 512 px, the eval cadence.
    m = resolved["model"]
    assert (m["max_sequence_length"], m["vae_dtype"], resolved["policy"]["latent_size"]) == (128, "float32", 64)
    assert resolved["algorithm"]["eval_every_n_epochs"] == (10 if experiment.startswith("diffusionnft") else 60)
    if experiment.startswith("diffusionnft"):  # its scorers' image paths: PickScore 8-bit PIL, the others float tensors
        paths = {n: (r["preprocess"], r["resize"], r["fit"]) for n, r in resolved["reward"]["rewards"].items()}
        assert paths == {"pickscore": ("processor", "bicubic", "crop"), "clipscore": ("tensor", "bilinear", "crop"),
                         "hpsv2": ("tensor", "bicubic", "pad")}
    else:
        assert resolved["reward"].get("preprocess", "processor") == "processor"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates_for_each_swept_value(experiment):
    """Each job of the sweep: every value of every swept parameter (one at a time)."""
    cfg = compose_cfg([f"+experiment={experiment}"])
    params = cfg.hydra.sweeper.params or {}
    assert params, f"{experiment} sweeps nothing"
    for key, values in params.items():
        for value in str(values).split(","):
            job = compose_cfg([f"+experiment={experiment}", f"{key}={value}"])
            OmegaConf.to_container(job, resolve=True)
            validate(job)


@pytest.mark.parametrize("launcher,target", [("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launchers_compose(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_.endswith(target)


def test_slurm_allocation_follows_the_trainer():
    """One SLURM task per device on each node: what Lightning's SLURM environment expects."""
    cfg = compose_cfg(["hydra/launcher=slurm", "trainer.devices=8", "trainer.num_nodes=2", "trainer.strategy=ddp"])
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 8, 8)


def readme_scaling_commands() -> list[list[str]]:
    """docs/scaling.md's commands for one GPU, 8 GPUs and 4 nodes."""
    block = page("scaling.md").split("<!-- scaling-commands -->")[1]
    block = block.split("<!-- /scaling-commands -->")[0].replace("\\\n", " ")
    return [shlex.split(line)[3:] for line in block.splitlines() if line.startswith("python -m rlft")]


def test_readme_scaling_commands_compose_and_keep_the_global_batch():
    commands = readme_scaling_commands()
    assert len(commands) == 3
    for args in commands:
        cfg = compose_cfg([a for a in args if a != "-m"])
        validate(cfg)
        processes = world_size(cfg.trainer)
        a = cfg.algorithm
        assert cfg.data.samples_per_epoch == 256, args
        assert processes * a.train_batch_size * a.gradient_accumulation_steps == 64, args  # samples per optimizer step


def test_the_projected_work_is_what_a_run_counts():
    """rlft.run.work's projection equals work/unet_evals as the runs count it: the default run's
    0.074M (18 epochs x 64 samples x (20 steps sampled + the SDE window's 4 trained x 3) x 2 for CFG)
    and the tiny CLI run's 192 an epoch (tests/test_end_to_end.py)."""
    from rlft.run.work import projected_unet_evals

    assert projected_unet_evals(compose_cfg([]), batched_guidance=True) == 18 * 64 * (20 + 4 * 3) * 2 == 73728
    tiny = compose_cfg(["trainer.max_epochs=2", "data.samples_per_epoch=8", "policy.num_steps=3",
                        "algorithm.timestep_fraction=1.0"])
    assert projected_unet_evals(tiny, batched_guidance=True) == 2 * 192


def test_compile_auto_compiles_above_the_break_even_only():
    from rlft.run.work import choose_compile

    cfg = compose_cfg(["policy.compile=auto"])  # the default run: 0.074M evaluations
    assert choose_compile(cfg, batched_guidance=True) is False
    cfg = compose_cfg(["policy.compile=auto", "compile_break_even=50000"])
    assert choose_compile(cfg, batched_guidance=True) is True
    assert choose_compile(compose_cfg(["policy.compile=true"]), batched_guidance=True) is True
    with pytest.raises(ConfigError, match=r"policy.compile='sometimes' is invalid: must be true, false, auto"):
        validate(compose_cfg(["policy.compile=sometimes"]))


@pytest.mark.parametrize("global_std", [False, True])
def test_grpos_global_std_reaches_the_module(global_std, tmp_path):
    """flow_grpo's sample.global_std (advantages over the batch's std: tests/test_algorithm_losses.py)."""
    module, _, _ = build(compose_cfg(["algorithm=grpo", f"algorithm.global_std={global_std}"], output_dir=str(tmp_path)))
    assert module.global_std is global_std
