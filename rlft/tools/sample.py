"""`rlft sample [ckpt_path=RUN/checkpoints/last.ckpt] [overrides]`: a grid of
samples, one row per prompt, from the base model or from a trained run's checkpoint.

It composes the same config as `python -m rlft`, so pass the run's model and policy
overrides (or nothing, for the embedded default)."""

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlft.run.checkpoints import load_trained_policy
from rlft.run.config import CONFIG_DIR, check_config_dir
from rlft.run.errors import one_line_errors
from rlft.run.sample_images import sample_grid


def load_policy(cfg: DictConfig, ckpt_path: str | None = None, where: dict | None = None):
    """The base model, with a run's trained weights when `ckpt_path` is given (then `where`, if
    given, receives the checkpoint's epoch and global_step)."""
    policy = instantiate(cfg.policy, **instantiate(cfg.model.load))
    if ckpt_path:
        (where if where is not None else {}).update(load_trained_policy(policy, ckpt_path))
    return policy.eval()


def sample_to_png(cfg: DictConfig) -> str:
    torch.manual_seed(cfg.seed)
    policy = load_policy(cfg, cfg.ckpt_path)
    prompts = list(cfg.sample.prompts or cfg.model.prompts.train)
    per_prompt = cfg.sample.per_prompt
    batch = [p for p in prompts for _ in range(per_prompt)]
    images = policy.sample(batch, progress=True).images
    rewards = instantiate(cfg.reward)(images, batch) if cfg.sample.with_reward else None
    figure = sample_grid(images, batch, rewards, max_images=len(batch), columns=per_prompt)
    figure.savefig(cfg.sample.out, dpi=cfg.sample.dpi)
    print(f"wrote {len(batch)} samples to {cfg.sample.out}")
    return cfg.sample.out


@hydra.main(config_path=CONFIG_DIR, config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        sample_to_png(cfg)


check_config_dir()

if __name__ == "__main__":
    main()
