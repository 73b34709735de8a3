"""`train(cfg)`: build everything from the composed config and run the Trainer."""

import logging

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlft.validation import validate

log = logging.getLogger(__name__)


def check_prompts(policy, prompts: list[str]) -> None:
    """Encode every prompt once, so a prompt the model cannot encode fails before training."""
    policy.encode_prompts(sorted(set(prompts)))


def build(cfg: DictConfig):
    """The module, datamodule and trainer a config describes (nothing is run)."""
    validate(cfg)
    L.seed_everything(cfg.seed, workers=True)
    components = instantiate(cfg.model.load)
    policy = instantiate(cfg.policy, **components)
    data = instantiate(cfg.data)
    check_prompts(policy, data.train_prompts + data.eval_prompts)
    # The algorithm's config names its other inputs (reward, ensemble, aggregation...).
    module = instantiate(cfg.algorithm.module, policy=policy)
    trainer = instantiate(cfg.trainer)
    return module, data, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    module, data, trainer = build(cfg)
    hparams = OmegaConf.to_container(cfg, resolve=True)
    if trainer.logger is not None:
        trainer.logger.log_hyperparams(hparams)  # visible (and in hparams.yaml) while it runs
        log.info(f"run directory: {trainer.logger.log_dir}  (tensorboard --logdir {trainer.logger.log_dir})")
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    name = module.summary_metric
    if module.first_reward_mean is not None and name in metrics:
        log.info(f"{name}: {module.first_reward_mean:.4f} (first) -> {metrics[name]:.4f} (last)")
    if trainer.logger is not None and name in metrics:
        # The HParams tab: every config value beside the final value of the summary metric.
        trainer.logger.log_hyperparams(hparams, {"hp/final_" + name.replace("/", "_"): metrics[name]})
        trainer.logger.save()
    return metrics
