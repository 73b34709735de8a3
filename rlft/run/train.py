"""`train(cfg)`: build everything from the composed config and run the Trainer."""

import logging
import sys
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from rlft.assets import CONFIG_DIR
from rlft.checks import constructor_node, set_by_user
from rlft.run.preemption import last_checkpoint
from rlft.run.progress import PhaseProgressBar
from rlft.run.validation import ConfigError, validate
from rlft.run.weights import check_weights
from rlft.run.work import choose_compile

log = logging.getLogger(__name__)


def memory_limit(cfg: DictConfig) -> int | None:
    """`memory_limit_gib` in bytes; auto: the CUDA device's memory when the run trains on one."""
    limit = cfg.get("memory_limit_gib", "auto")
    if limit == "auto":
        on_gpu = cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        return torch.cuda.get_device_properties(0).total_memory if on_gpu else None
    return None if limit is None else int(float(limit) * 2**30)


def check_memory(cfg: DictConfig) -> None:
    """The run's memory plan (`rlft.memory.plan`) against `memory_limit_gib`, before loading weights."""
    limit = memory_limit(cfg)
    if limit is None:
        return
    from rlft.memory.plan import describe, fit_advice, plan_run

    plan = plan_run(cfg)
    if plan.peak.with_overhead() > limit:
        raise ConfigError(f"memory_limit_gib={cfg.memory_limit_gib}: this run's plan does not fit: its {plan.peak.name} "
                          f"peaks at {plan.peak.with_overhead() / 2**30:.1f} GiB a process with overhead, over "
                          f"{limit / 2**30:.1f} GiB. To fit, change: {fit_advice(cfg, plan)}; "
                          f"`rlft memory <the same overrides>` prints the whole plan:\n{describe(plan, limit)}")
    log.info(f"memory plan: peak {plan.peak.name}, {plan.peak.with_overhead() / 2**30:.1f} GiB of {limit / 2**30:.1f}")


def check_family(policy, model_cfg) -> None:
    """The loaded model's scheduler decides the sampler; the model config must agree, or its
    family-specific settings (policy.eta or policy.noise_level) would have been checked wrongly."""
    declared = model_cfg.get("family", "ddim")
    if policy.family != declared:
        raise ConfigError(
            f"model.pretrained={model_cfg.pretrained!r} holds a {policy.family} model (its scheduler is "
            f"{type(policy.scheduler).__name__}), but model={model_cfg.name} declares model.family={declared}: "
            f"choose the model config of its family (e.g. model=digits_flow for a flow model, model=digits for DDIM)"
        )


def pair_settings(cfg: DictConfig) -> str | None:
    """The settings that conf/model_algorithm/ applied for this run's (model, algorithm) pair, with
    the values the run has (a command-line override wins over them), for the start of its log."""
    if not HydraConfig.initialized():
        return None
    choice = HydraConfig.get().runtime.choices.get("model_algorithm")  # named even when no such file is
    folder = Path(CONFIG_DIR) / "model_algorithm"
    if not choice or not (folder / f"{choice}.yaml").is_file():
        return None
    pair, names = {}, [choice]
    while names:  # the file, then the files its defaults list extends (whose values it overrides)
        node = OmegaConf.load(folder / f"{names.pop()}.yaml")
        names += [d for d in node.get("defaults", []) if isinstance(d, str) and d != "_self_"]
        for group, block in node.items():
            for key, value in (block.items() if group != "defaults" else ()):
                pair.setdefault(f"{group}.{key}", value)
    plain = lambda v: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v

    def said(key, value):
        actual = plain(OmegaConf.select(cfg, key))
        raw = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value  # unresolved: as the file writes it
        if not set_by_user(key) and (actual == raw or "${" in str(raw)):  # interpolated: the pair's, resolved
            return f"{key}={actual}"
        return f"{key}={actual} (the command line's; the pair's {raw})"

    values = ", ".join(said(key, value) for key, value in pair.items())
    return f"model={cfg.model.name} algorithm={cfg.algorithm.name}: conf/model_algorithm/{choice}.yaml sets {values}"


def build(cfg: DictConfig):
    """The module, datamodule and trainer a config describes (nothing is run)."""
    validate(cfg)
    check_memory(cfg)  # before anything loads: a run that will not fit stops here
    check_weights(cfg)  # before anything loads: a missing hub id fails in seconds
    if said := pair_settings(cfg):
        log.info(said)
    L.seed_everything(cfg.seed, workers=True)
    components = instantiate(cfg.model.load)
    policy = instantiate(cfg.policy, **components, compile=False)
    check_family(policy, cfg.model)
    compile = choose_compile(cfg, policy.batched_guidance)  # "auto": from the run's projected work
    if compile:
        policy.compile_denoiser(OmegaConf.to_container(compile) if isinstance(compile, DictConfig) else {})
    data = instantiate(cfg.data)
    # A prompt the text encoders cannot take fails now; the prompts are encoded on the device (on_fit_start).
    policy.model.check_prompts(data.train_prompts + data.eval_prompts)
    # The algorithm's config names its other inputs (reward, ensemble, aggregation...).
    module = instantiate(constructor_node(cfg.algorithm), policy=policy)
    trainer = instantiate(cfg.trainer, callbacks=run_callbacks(cfg.trainer))
    return module, data, trainer


def run_callbacks(trainer_cfg: DictConfig) -> list:
    """The trainer config's callbacks, and the phases' progress bar unless the bar is turned off
    (`trainer.enable_progress_bar=false`: Lightning refuses a progress bar callback then)."""
    callbacks = [instantiate(c) for c in trainer_cfg.get("callbacks") or []]
    if trainer_cfg.get("enable_progress_bar", True) is not False:
        callbacks.append(PhaseProgressBar())
    return callbacks


def resume_path(ckpt_path: str | None, trainer: L.Trainer) -> str | None:
    """`last`: this run directory's last checkpoint if there is one (else a fresh start);
    a path: that checkpoint, which must exist; null: a fresh start."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = last_checkpoint(trainer)
        if last is None or not last.is_file():
            return None
        log.info(f"resuming from {last}")
        return str(last)
    if not Path(ckpt_path).is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r} is invalid: no such file (give a .ckpt file, 'last' or null)")
    return ckpt_path


def matmul_precision(cfg: DictConfig) -> str:
    """`float32_matmul_precision`; `auto` is `high` (TF32 matmuls, as flow_grpo sets them) when the run
    trains on a CUDA GPU, else `highest` (a CPU's float32 stays exact). The log-probabilities are
    elementwise float32 arithmetic either way; TF32 rounds the denoiser's matmul inputs only."""
    precision = cfg.get("float32_matmul_precision", "highest")
    if precision != "auto":
        return precision
    on_gpu = cfg.trainer.accelerator in ("gpu", "cuda") or (cfg.trainer.accelerator == "auto" and torch.cuda.is_available())
    return "high" if on_gpu and torch.cuda.is_available() else "highest"


def without_secrets(node):
    """The resolved config for TensorBoard and hparams.yaml, a token's value (reward=http's, from
    RLFT_SERVE_TOKEN) replaced by whether it is set."""
    if isinstance(node, dict):
        return {k: ("<set>" if v is not None else None) if k == "token" else without_secrets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_secrets(v) for v in node]
    return node


def tensorboard_hint(log_dir: str) -> str:
    """The run's start line: TensorBoard pointed at the folder above the run, where the run is named
    by its own directory (pointed at the run itself, TensorBoard names it `.`)."""
    run = Path(log_dir).resolve()
    return f"run directory: {log_dir}  (tensorboard --logdir {run.parent}: this run is {run.name!r} there)"


def train(cfg: DictConfig) -> dict[str, float]:
    torch.set_float32_matmul_precision(matmul_precision(cfg))
    module, data, trainer = build(cfg)
    hparams = without_secrets(OmegaConf.to_container(cfg, resolve=True))
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(hparams)  # visible (and in hparams.yaml) while it runs
        if trainer.is_global_zero:
            log.info(tensorboard_hint(trainer.logger.log_dir))
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.ckpt_path, trainer))
    except SIGTERMException:
        # The epoch in progress is discarded; the last checkpoint holds everything before it.
        last = last_checkpoint(trainer)
        where = last.parent.parent if last else "the same output directory"
        log.warning(f"stopped by a signal in epoch {trainer.current_epoch}; that epoch is redone on resume. Resume "
                    f"with the same command in {where} (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep); "
                    f"ckpt_path=last is the default")
        sys.exit(143)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    name = module.summary_metric
    if module.first_reward_mean is not None and name in metrics and trainer.is_global_zero:
        log.info(f"{name}: {module.first_reward_mean:.4f} (first) -> {metrics[name]:.4f} (last)")
    if "work/unet_evals" in metrics and trainer.is_global_zero:
        log.info(f"UNet work: {metrics['work/unet_evals'] / 1e6:.3f}M sample-evaluations (work/unet_evals: forward 1, "
                 f"forward+backward 3, CFG doubles; evaluation excluded)")
    if trainer.logger is not None and name in metrics:
        # The HParams tab: every config value beside the final value of the summary metric.
        trainer.logger.log_hyperparams(hparams, {"hp/final_" + name.replace("/", "_"): metrics[name]})
        trainer.logger.save()
    return metrics
