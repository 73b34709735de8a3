"""PPO on the denoising MDP (DDPO-IS): the clipped importance-weighted loss of
`rlft.algorithms.ppo_loss` on the shared pipeline (`rlft.algorithms.pipeline`)."""

import math

import torch
from omegaconf import DictConfig

from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.checks import check
from rlft.types import Trajectories


class PPO(OnlineRL):
    first_update_stats = ("approx_kl", "clipfrac")
    max_stats = ("log_ratio_absmax",)

    def __init__(self, clip_range: float = 1e-4, max_log_ratio: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.clip_range = clip_range
        self.max_log_ratio = max_log_ratio

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        a = cfg.algorithm
        check(0 < a.clip_range < 1, "algorithm.clip_range", a.clip_range, "must be in (0, 1)")
        check(a.max_log_ratio > 0, "algorithm.max_log_ratio", a.max_log_ratio, "must be > 0")

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_prob = self.policy.log_prob(mb.latents, mb.next_latents, mb.timesteps, mb.embeds)
        loss, stats = ppo_clip_loss(log_prob, mb.old_log_probs, mb.advantages, self.clip_range, self.max_log_ratio)
        return loss, vars(stats)

    def update(self, traj: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        out = super().update(traj, advantages)
        # The window the clip puts on the joint (true) ratio: per element under `mean`, so
        # ((1 - eps)^N, (1 + eps)^N) for N latent elements; the joint ratio itself under `sum`.
        power = traj.latents[0, 0].numel() if self.policy.reduction == "mean" else 1
        out["train/joint_clip_low"] = math.exp(power * math.log1p(-self.clip_range))
        out["train/joint_clip_high"] = math.exp(power * math.log1p(self.clip_range))
        return out
