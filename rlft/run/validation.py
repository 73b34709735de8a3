"""Checks of a composed config, run before anything is built: a bad value fails at once,
naming the setting, the value and what is valid."""

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig

from rlft.algorithms.old_policy import decay_schedule
from rlft.diffusion.gaussian import KL_FORMS
from rlft.diffusion.ode import ODE_SOLVERS
from rlft.diffusion.policy import CFG_GRADIENTS
from rlft.diffusion.samplers import FAMILIES, SDE_TYPES, check_sde_window, shifted_window
from rlft.ensemble.ucb import check_settings as check_ucb_settings
from rlft.rewards.learned import check_settings as check_learned_reward
from rlft.rewards.geneval_rules import SCORES as GENEVAL_SCORES
from rlft.rewards.geneval_rules import load_metadata, metadata_of
from rlft.rewards.multi import COMBINES, check_components, component_configs, single_reward_options
from rlft.rewards.ocr import ocr_target
from rlft.run.config import CONFIG_DIR

RWR_WEIGHTINGS = ("exp", "sparse")
AWM_WEIGHTINGS = ("uniform", "t", "t**2", "huber", "ghuber")  # rlft.algorithms.awm
AWM_TIME_TYPES = ("discrete", "discrete_wo_init")  # rlft.algorithms.rwr (named here, where the config is checked before import)


class ConfigError(ValueError):
    pass


def _check(ok: bool, setting: str, value, valid: str) -> None:
    if not ok:
        raise ConfigError(f"{setting}={value!r} is invalid: {valid}")


def world_size(trainer_cfg) -> int | None:
    """Processes a trainer config asks for, when the config says (devices an int or a list)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        devices = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        return None  # "auto", -1: Lightning decides; the modules check again at setup
    return devices * trainer_cfg.get("num_nodes", 1)


def check_sharding(world: int, samples_per_epoch: int, train_batch_size: int | None = None,
                   gradient_accumulation_steps: int = 1) -> None:
    """Under DDP every backward pass is a collective, so every rank must run as many: each
    gets an equal shard of the epoch's samples, cut into whole micro-batches (PPO)."""
    _check(samples_per_epoch % world == 0, "data.samples_per_epoch", samples_per_epoch,
           f"must be a multiple of the {world} processes (trainer.devices x trainer.num_nodes), "
           f"so that every rank gets an equal shard")
    if train_batch_size is None:
        return
    per_rank = samples_per_epoch // world
    if world == 1:
        share, per = f"data.samples_per_epoch={samples_per_epoch}", "data.samples_per_epoch / algorithm.train_batch_size"
    else:
        share = f"the {per_rank} samples each of the {world} processes gets (data.samples_per_epoch={samples_per_epoch} / {world}); it is per device"
        per = f"on each process: data.samples_per_epoch / {world} / algorithm.train_batch_size"
    _check(per_rank % train_batch_size == 0, "algorithm.train_batch_size", train_batch_size, f"must divide {share}")
    micro_batches = per_rank // train_batch_size
    _check(gradient_accumulation_steps >= 1 and micro_batches % gradient_accumulation_steps == 0,
           "algorithm.gradient_accumulation_steps", gradient_accumulation_steps,
           f"must be >= 1 and divide the {micro_batches} micro-batches of an epoch ({per})")


def check_launcher(world: int | None, devices) -> None:
    """Lightning starts the other processes of a DDP run by re-running the command line; in a
    local multirun that would re-run the whole sweep in every process."""
    if not world or world == 1 or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    _check(hydra_cfg.mode != RunMode.MULTIRUN or "submitit" in launcher, "trainer.devices", devices,
           f"{world} processes in a multirun with {launcher.rsplit('.', 1)[-1]} are not supported: Lightning "
           f"re-runs the command line for each process, which would re-run the sweep. Use hydra/launcher=slurm "
           f"(SLURM starts one task per device), or run the sweep's runs one by one")


def check_sampler(cfg: DictConfig) -> None:
    """The stochastic step's settings belong to the model's family (model.family)."""
    p, family = cfg.policy, cfg.model.get("family", "ddim")
    _check(family in FAMILIES, "model.family", family, f"must be one of {sorted(FAMILIES)}")
    own, other = ("eta", "noise_level") if family == "ddim" else ("noise_level", "eta")
    _check(p.get(other) is None, f"policy.{other}", p.get(other),
           f"is a {'flow' if family == 'ddim' else 'DDIM'}-model setting, and model={cfg.model.name} is a {family} "
           f"model: set policy.{own} instead (or leave policy.{other} null)")
    if family == "ddim":
        _check(p.eta is None or p.eta > 0, "policy.eta", p.eta,
               "must be > 0: eta=0 makes DDIM deterministic, with no log-probability for RL")
    else:
        _check(p.noise_level is None or p.noise_level > 0, "policy.noise_level", p.noise_level,
               "must be > 0 (Flow-GRPO's default is 0.7): at 0 the flow step is the deterministic ODE step, "
               "with no log-probability for RL")
    try:
        check_sde_window(None if p.sde_window is None else list(p.sde_window), p.num_steps)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    shift = p.get("sde_window_shift")
    if shift is not None:
        _check(p.sde_window is not None, "policy.sde_window_shift", dict(shift),
               "moves the SDE window: set policy.sde_window=[start, stop] too (its first position; MixGRPO: [0, 4])")
        _check(set(shift) == {"every", "stride"} and all(isinstance(shift[k], int) and shift[k] >= 1 for k in shift),
               "policy.sde_window_shift", dict(shift), "must be {every: epochs >= 1, stride: steps >= 1}")
        _check(cfg.algorithm.get("pipeline") == "online", "policy.sde_window_shift", dict(shift),
               f"moves the window between the epochs of the sampling-based algorithms; algorithm={cfg.algorithm.name} "
               "does not move it")
        last = shifted_window(list(p.sde_window), cfg.trainer.max_epochs - 1, shift.every, shift.stride)
        _check(last[1] <= p.num_steps, "policy.sde_window_shift", dict(shift),
               f"moves policy.sde_window={list(p.sde_window)} to {last} by the last epoch ({cfg.trainer.max_epochs - 1}), "
               f"past policy.num_steps={p.num_steps}: shift less often or by less, or train fewer epochs")
    solver = p.get("ode_solver", "euler")
    _check(solver in ODE_SOLVERS, "policy.ode_solver", solver, f"must be one of {list(ODE_SOLVERS)}")
    _check(solver != "dpm2" or family == "flow", "policy.ode_solver", solver,
           f"is written for rectified-flow models, and model={cfg.model.name} is a {family} model: use euler "
           "(DDIM with eta 0)")
    sde_type = p.get("sde_type", "sde")
    _check(sde_type in SDE_TYPES, "policy.sde_type", sde_type, f"must be one of {list(SDE_TYPES)}")
    _check(sde_type == "sde" or family == "flow", "policy.sde_type", sde_type,
           f"is a flow-model step, and model={cfg.model.name} samples with DDIM, whose step (policy.eta) keeps the "
           "schedule's coefficients already: use sde")
    _check(not (sde_type == "cps" and cfg.algorithm.get("kl_form", "exact") != "exact"), "algorithm.kl_form",
           cfg.algorithm.get("kl_form"), "must be exact with policy.sde_type=cps (flow_grpo's without_dt form is the SDE step's)")
    _check(p.get("cfg_gradient", "both") in CFG_GRADIENTS, "policy.cfg_gradient", p.get("cfg_gradient"),
           f"must be one of {list(CFG_GRADIENTS)}")
    if p.get("deterministic"):
        _check(p.sde_window is None, "policy.sde_window", p.sde_window,
               "must be null with policy.deterministic=true: a deterministic sampler has no stochastic step")
        name = cfg.algorithm.name
        _check(name in ("nft", "awm"), "policy.deterministic", True,
               f"samples without noise, so no step has a log-probability, and algorithm={name} trains on "
               f"log-probabilities: only algorithm=nft and awm (trained on the forward process) take deterministic samples")


def check_geneval(cfg: DictConfig, nodes, splits: tuple[str, ...]) -> None:
    """reward=geneval judges each prompt by its GenEval metadata: a prompt it will score without any
    (the training and evaluation prompts when trained on, the evaluation's when held out) is refused
    before any work."""
    for where, node in nodes:
        if node.get("_target_") != "rlft.rewards.geneval.GenEvalReward":
            continue
        _check(node.score in GENEVAL_SCORES, f"{where}.score", node.score, f"one of {list(GENEVAL_SCORES)}")
        try:
            table = load_metadata(node.metadata)
        except (ValueError, FileNotFoundError) as error:
            raise ConfigError(f"{where}.metadata: {error}") from None
        for split in splits if "prompts" in cfg.get("model", {}) else ():
            for prompt in cfg.model.prompts[split]:
                try:
                    metadata_of(table, prompt)
                except ValueError as error:
                    raise ConfigError(f"model.prompts.{split}: {error}") from None


def check_rewards(cfg: DictConfig) -> None:
    """reward=multi's components and the held-out rewards (evaluation.rewards): known names,
    weights > 0, settings only for named rewards, nothing both trained on and held out."""
    r = cfg.get("reward", {})
    multi = r.get("_target_") == "rlft.rewards.multi.MultiReward"
    trained = list(r.components) if multi else []
    if multi:
        try:
            check_components(r.components, CONFIG_DIR)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _check(r.combine in COMBINES, "reward.combine", r.combine, f"must be one of {list(COMBINES)}")
        stray = sorted(set(r.get("settings") or {}) - set(trained))
        _check(not stray, "reward.settings", stray, f"names rewards that are no component; the components: {trained}")
        _check(not (cfg.algorithm.name == "seiko" and r.combine == "advantages"), "reward.combine", r.combine,
               "with algorithm=seiko: SEIKO fits one reward model to the oracle's answers, so it needs one reward per "
               "sample; use reward.combine=sum")
    # The trained reward's configs: itself, or each component of reward=multi.
    nodes = [(f"reward.rewards.{n}", c) for n, c in r.rewards.items()] if multi else [("reward", r)]
    # Rewards that check their settings when built and cost nothing to build (no weights, no network).
    for where, node in nodes:
        if node.get("_target_") == "rlft.rewards.vlm_judge.VlmJudge":
            try:
                instantiate(node)
            except InstantiationException as error:  # Hydra's wrapper of the reward's own ValueError
                cause = error.__cause__ if isinstance(error.__cause__, ValueError) else error
                raise ConfigError(str(cause) if where == "reward" else f"{where}: {cause}") from None
    # reward=ocr reads the text in each prompt's quotes: a prompt without any is refused before any work.
    ocr = [where for where, node in nodes if node.get("_target_") == "rlft.rewards.ocr.OcrReward"]
    if ocr and "prompts" in cfg.get("model", {}):
        for split in ("train", "eval"):
            for prompt in cfg.model.prompts[split]:
                try:
                    ocr_target(prompt)
                except ValueError as error:
                    raise ConfigError(f"model.prompts.{split}: {error} ({ocr[0]} is reward=ocr; the shipped set: "
                                      f"model.prompts.train='${{prompt_set:ocr_signs}}' "
                                      f"model.prompts.eval='${{prompt_set:ocr_signs_eval}}')") from None
    check_geneval(cfg, nodes, splits=("train", "eval"))
    e = cfg.get("evaluation", {})
    held_out = list(e.get("rewards") or [])
    options = single_reward_options(CONFIG_DIR)
    for name in held_out:
        _check(name in options, "evaluation.rewards", held_out, f"{name!r} is no reward option; valid: {options}")
        _check(name not in trained, "evaluation.rewards", held_out,
               f"{name} is a component of reward=multi, trained on and logged as eval/{name} already; a held-out reward is one the policy does not see")
    _check(len(set(held_out)) == len(held_out), "evaluation.rewards", held_out, "names a reward twice")
    stray = sorted(set(e.get("settings") or {}) - set(held_out))
    _check(not stray, "evaluation.settings", stray, f"names rewards that are not held out; evaluation.rewards: {held_out}")
    held_out_nodes = component_configs(held_out, e.get("settings") or {}, CONFIG_DIR)
    check_geneval(cfg, [(f"evaluation.settings.{n}", c) for n, c in held_out_nodes.items()], splits=("eval",))


def validate(cfg: DictConfig) -> None:
    p = cfg.policy
    _check(p.num_steps >= 1, "policy.num_steps", p.num_steps, "must be an integer >= 1")
    _check(p.guidance_scale >= 1, "policy.guidance_scale", p.guidance_scale, "must be >= 1 (1 disables guidance)")
    compile = p.get("compile", False)
    _check(compile in (True, False, "auto") or isinstance(compile, DictConfig), "policy.compile", compile,
           "must be true, false, auto (on when the run's projected work exceeds compile_break_even) or a dict of "
           "torch.compile's arguments")
    _check(cfg.get("compile_break_even", 1) > 0, "compile_break_even", cfg.get("compile_break_even"),
           "must be > 0 (UNet evaluations; rlft bench measures it)")
    _check(p.reduction in ("mean", "sum"), "policy.reduction", p.reduction, "must be mean or sum (reduction=mean|sum)")
    _check(p.lora_rank is None or p.lora_rank >= 1, "policy.lora_rank", p.lora_rank, "must be >= 1, or null for full fine-tuning")
    family = cfg.model.get("family", "ddim")
    _check(cfg.algorithm.name not in ("nft", "awm") or family == "flow", "algorithm", cfg.algorithm.name,
           f"{'DiffusionNFT' if cfg.algorithm.name == 'nft' else 'AWM'} trains rectified-flow models (model.family=flow) on their forward process, and "
           f"model={cfg.model.name} is a {family} model: use model=digits_flow (or another flow "
           f"model: sd3, sd35_*, flux_*, flux2_klein_4b, qwen_image, wan*), or algorithm=ppo, grpo, ddpo_sf, rwr or seiko on this model")
    check_sampler(cfg)  # after: an algorithm's sampler (nft's dpm2) belongs to its model family
    dtype = cfg.model.get("dtype", "float32")
    _check(p.lora_rank is not None or dtype == "float32", "model.dtype", dtype,
           "must be float32 for full fine-tuning (policy.lora_rank=null); for speed use trainer.precision=16-mixed")
    t = cfg.trainer
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    _check(not (on_cpu and str(t.get("precision", "32")).startswith("16")), "trainer.precision",
           t.get("precision"), "16-bit needs a GPU (trainer.accelerator=gpu); on a CPU use 32 or bf16-mixed")
    # 16-mixed scales the loss; the algorithms clip and check gradients before Lightning's
    # scaler unscales them, so clipping would act on scaled gradients. bf16 needs no scaler.
    _check(str(t.get("precision", "32")) not in ("16-mixed", "16"), "trainer.precision", t.get("precision"),
           "16-mixed (float16 with a loss scaler) is not supported yet: use bf16-mixed (Ampere and later) "
           "or 32 with model.dtype=bfloat16 frozen weights")
    _check(not (on_cpu and dtype == "float16"), "model.dtype", dtype,
           "float16 weights need a GPU (trainer.accelerator=gpu); on a CPU use model.dtype=float32")

    if "aggregation" in cfg:
        instantiate(cfg.aggregation)  # each aggregation checks its own parameters
    instantiate(cfg.health)  # so does the non-finite guard
    _check(cfg.data.samples_per_epoch >= 1, "data.samples_per_epoch", cfg.data.samples_per_epoch, "must be >= 1")
    _check(cfg.ckpt_path in (None, "last") or str(cfg.ckpt_path).endswith(".ckpt"), "ckpt_path", cfg.ckpt_path,
           "must be last (resume this run directory if it has a checkpoint), null, or a .ckpt file")

    a = cfg.algorithm
    check_rewards(cfg)
    if cfg.get("reward", {}).get("_target_") == "rlft.rewards.learned.LearnedReward":  # reward=ensemble
        r = cfg.reward
        _check(a.get("pipeline") == "online", "reward", "ensemble",
               f"with algorithm={a.name}: reward=ensemble is a learned reward for the sampling-based algorithms (ppo, "
               f"grpo, ddpo_sf, rwr, nft), and algorithm={a.name} fits its own reward model on the oracle: give it the "
               f"oracle (e.g. reward=compressibility)")
        _check((world_size(t) or 1) == 1, "trainer.devices", t.get("devices"),
               "must be 1 with reward=ensemble (the learned reward's fit is not shared across processes yet)")
        check_learned_reward(r.queries, r.val_fraction, r.refresh_every_n_epochs, cfg.trainer.max_epochs)
    _check(a.lr > 0, "algorithm.lr", a.lr, "must be > 0")
    _check(a.train_batch_size >= 1, "algorithm.train_batch_size", a.train_batch_size, "must be >= 1")
    m = a.module
    # Named where a user sets it: PPO lifts these to algorithm.*, SEIKO keeps them in algorithm.module.*.
    where = lambda key: f"algorithm.{key}" if key in a else f"algorithm.module.{key}"
    _check(m.sample_batch_size >= 1, where("sample_batch_size"), m.sample_batch_size, "must be >= 1")
    _check(m.max_grad_norm > 0, where("max_grad_norm"), m.max_grad_norm, "must be > 0")
    if a.get("pipeline") == "online":  # conf/algorithm/base/online.yaml: rlft.algorithms.pipeline
        d = cfg.data
        if "clip_range" in a and a.name != "awm":
            _check(0 < a.clip_range < 1, "algorithm.clip_range", a.clip_range, "must be in (0, 1)")
        if "max_log_ratio" in a:
            _check(a.max_log_ratio > 0, "algorithm.max_log_ratio", a.max_log_ratio, "must be > 0")
        _check(0 < a.timestep_fraction <= 1, "algorithm.timestep_fraction", a.timestep_fraction, "must be in (0, 1]")
        _check(a.adv_clip_max > 0, "algorithm.adv_clip_max", a.adv_clip_max, "must be > 0")
        ema = a.get("ema_decay")
        _check(ema is None or 0 <= ema < 1, "algorithm.ema_decay", ema,
               "must be in [0, 1) (public: nft 0.9, awm 0.99), or null for no evaluation EMA")
        _check(a.get("num_inner_epochs", 1) >= 1, "algorithm.num_inner_epochs", a.get("num_inner_epochs"), "must be >= 1")
        check_sharding(world_size(t) or 1, d.samples_per_epoch, a.train_batch_size, a.get("gradient_accumulation_steps", 1))
        _check(a.stat_buffer_size >= 1, "algorithm.stat_buffer_size", a.stat_buffer_size, "must be >= 1")
        _check(a.stat_min_count <= a.stat_buffer_size, "algorithm.stat_min_count", a.stat_min_count,
               f"must be <= algorithm.stat_buffer_size={a.stat_buffer_size}")
        if "group_size" in a:
            _check(isinstance(a.group_size, int) and a.group_size >= 2, "algorithm.group_size", a.group_size,
                   f"must be an integer >= 2: algorithm={a.name} compares each sample with the others of its prompt's group")
            _check(d.samples_per_epoch % a.group_size == 0, "data.samples_per_epoch", d.samples_per_epoch,
                   f"must be a multiple of algorithm.group_size={a.group_size} (whole groups of one prompt each)")
        if "kl_weight" in a:
            _check(a.kl_weight >= 0, "algorithm.kl_weight", a.kl_weight, "must be >= 0 (0: no KL term)")
        if "guard" in a:
            _check(isinstance(a.guard, bool), "algorithm.guard", a.guard, "must be true or false")
        if "kl_form" in a:
            _check(a.kl_form in KL_FORMS, "algorithm.kl_form", a.kl_form, f"must be one of {list(KL_FORMS)}")
            _check(a.kl_form == "exact" or cfg.model.get("family", "ddim") == "flow", "algorithm.kl_form", a.kl_form,
                   f"is flow_grpo's form for rectified-flow models, and model={cfg.model.name} samples with DDIM: use exact")
        if a.name == "awm":
            _check(a.weighting in AWM_WEIGHTINGS, "algorithm.weighting", a.weighting, f"must be one of {list(AWM_WEIGHTINGS)}")
            _check(a.time_type in AWM_TIME_TYPES, "algorithm.time_type", a.time_type, f"must be one of {list(AWM_TIME_TYPES)}")
            available = int(p.num_steps * a.timestep_fraction) - (a.time_type == "discrete_wo_init")
            _check(isinstance(a.train_timesteps, int) and 1 <= a.train_timesteps <= available, "algorithm.train_timesteps",
                   a.train_timesteps, f"must be an integer in [1, {available}]: one time from each stratum of the "
                   f"first int(timestep_fraction * policy.num_steps) steps")
            _check(0 < a.clip_range <= 1, "algorithm.clip_range", a.clip_range, "must be in (0, 1] (public: 1)")
            _check(a.advantage_max > 0, "algorithm.advantage_max", a.advantage_max, "must be > 0")
            _check(a.ema_kl_weight >= 0, "algorithm.ema_kl_weight", a.ema_kl_weight, "must be >= 0 (0: no EMA term)")
            _check(0 <= a.ema_kl_max_decay < 1, "algorithm.ema_kl_max_decay", a.ema_kl_max_decay, "must be in [0, 1)")
            _check(p.guidance_scale == 1, "policy.guidance_scale", p.guidance_scale,
                   "must be 1 for algorithm=awm: the public runs train and sample the conditional velocity")
        if a.name == "rwr":
            _check(a.weighting in RWR_WEIGHTINGS, "algorithm.weighting", a.weighting, f"must be one of {list(RWR_WEIGHTINGS)}")
            _check(a.beta > 0, "algorithm.beta", a.beta, "must be > 0: the temperature of w = exp(A / beta)")
            _check(0 < a.quantile <= 1, "algorithm.quantile", a.quantile, "must be in (0, 1]: the share of the batch kept")
        if a.name == "nft":
            _check(p.guidance_scale == 1, "policy.guidance_scale", p.guidance_scale,
                   "must be 1 for algorithm=nft: DiffusionNFT is CFG-free, it trains and samples the conditional velocity")
            _check(a.beta > 0, "algorithm.beta", a.beta, "must be > 0 (the public code's default is 1)")
            try:
                decay_schedule(a.get("decay_type"), None if a.get("decay") is None else list(a.decay))
            except ValueError as error:
                raise ConfigError(str(error)) from None

    if a.name == "seiko":
        # Its reward backpropagation runs the ensemble on decoded images; on videos it would need the
        # frame averaging inside the gradient path, which is not written (the online algorithms score frames).
        _check("num_frames" not in cfg.model, "algorithm", a.name,
               f"SEIKO backpropagates an image reward model through the sampler, and model={cfg.model.name} is a "
               "video model: use algorithm=ppo, grpo, ddpo_sf, rwr or nft on it (their rewards score each frame)")
        check_sharding(world_size(t) or 1, cfg.data.samples_per_epoch)
        budget = list(a.queries_per_round)
        _check(len(budget) > 0 and all(isinstance(n, int) and n > 0 for n in budget),
               "algorithm.queries_per_round", budget, "must be a non-empty list of positive query counts")
        _check(a.num_heads >= 1, "algorithm.num_heads", a.num_heads, "must be >= 1 (the public SEIKO code uses 4)")
        _check(a.epochs_per_round >= 1, "algorithm.epochs_per_round", a.epochs_per_round, "must be >= 1")
        _check(1 <= a.truncation_steps <= p.num_steps, "algorithm.truncation_steps", a.truncation_steps,
               f"must be in [1, policy.num_steps={p.num_steps}]")
        _check(a.kl_weight >= 0, "algorithm.kl_weight", a.kl_weight, "must be >= 0")
        e = cfg.get("ensemble")
        if e is not None and e.get("_target_") == "rlft.ensemble.ucb.UCBReward":
            check_ucb_settings(e.alpha, e.lam, e.clip, e.sigma)
        _check(m.ensemble_epochs >= 1, "algorithm.module.ensemble_epochs", m.ensemble_epochs, "must be >= 1")
        _check(0 < m.ensemble_val_fraction < 1, "algorithm.module.ensemble_val_fraction", m.ensemble_val_fraction,
               "must be in (0, 1): the share of feedback held out to measure the ensemble's fit")

    strategy = str(t.get("strategy", "auto"))
    # FSDP/DeepSpeed shard the weights: the algorithms' own gradient clipping (a local norm)
    # and their many backward passes inside one training_step would be wrong there.
    _check(not any(name in strategy for name in ("fsdp", "deepspeed")), "trainer.strategy", strategy,
           "sharded strategies are not supported by the algorithms yet; use ddp (docs/scaling.md: full "
           "fine-tuning of SD 1.x/2.x fits one 40-80 GB GPU per process)")
    check_launcher(world_size(t), t.get("devices"))
    # Last: for SEIKO it follows from the budget, whose own message says more.
    _check(cfg.trainer.max_epochs >= 1, "trainer.max_epochs", cfg.trainer.max_epochs, "must be >= 1")
