"""Reward-weighted regression (the DDPO paper's RWR baseline): maximise the log-likelihood of
the sampled transitions weighted by their reward, `loss = -w * logp`.

Weights, from the standardised rewards A (the pipeline's advantages: per-prompt statistics, as
PPO's, so that `beta` is in units of the reward's spread whatever the reward's scale):
- `exp`: w = exp(A / beta), normalised to mean 1 over the batch;
- `sparse`: w = 1 for the top `quantile` of the batch, 0 elsewhere.
"""

import math

import torch
from omegaconf import DictConfig

from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.types import Trajectories
from rlft.checks import check

WEIGHTINGS = ("exp", "sparse")


def rwr_weights(advantages: torch.Tensor, weighting: str, beta: float = 1.0, quantile: float = 0.25) -> torch.Tensor:
    """(B,) standardised rewards -> (B,) non-negative weights."""
    if weighting == "exp":
        return torch.softmax(advantages.float() / beta, dim=0) * len(advantages)
    if weighting == "sparse":
        keep = max(1, math.ceil(quantile * len(advantages)))
        weights = torch.zeros_like(advantages, dtype=torch.float32)
        weights[torch.topk(advantages.float(), keep).indices] = 1.0
        return weights
    raise ValueError(f"weighting={weighting!r} is not one of {WEIGHTINGS}")


def rwr_loss(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return -(weights.detach() * log_prob).mean()


class RWR(OnlineRL):
    def __init__(self, weighting: str = "exp", beta: float = 1.0, quantile: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.weighting, self.beta, self.quantile = weighting, beta, quantile

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        a = cfg.algorithm
        check(a.weighting in WEIGHTINGS, "algorithm.weighting", a.weighting, f"must be one of {list(WEIGHTINGS)}")
        check(a.beta > 0, "algorithm.beta", a.beta, "must be > 0: the temperature of w = exp(A / beta)")
        check(0 < a.quantile <= 1, "algorithm.quantile", a.quantile, "must be in (0, 1]: the share of the batch kept")

    def advantages(self, prompts: list[str], rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The weights (B,) that `loss` sees in place of advantages; 0 for a non-finite reward."""
        standardised = super().advantages(prompts, rewards, valid)
        weights = torch.zeros_like(standardised)
        weights[valid] = rwr_weights(standardised[valid], self.weighting, self.beta, self.quantile)
        return weights

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_prob = self.policy.log_prob(mb.latents, mb.next_latents, mb.timesteps, mb.embeds)
        return rwr_loss(log_prob, mb.advantages), {}

    def update(self, traj: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        out = super().update(traj, advantages)
        # The weights' effective sample size as a fraction of the batch: 1 = uniform, 1/B = one sample.
        out["train/weight_ess_fraction"] = float(advantages.sum() ** 2 / (advantages.pow(2).sum() * len(advantages)))
        return out
