"""The clipped PPO objective of DDPO, computed in log space.

With `reduction=sum` a log-ratio is N times the per-element one (N latent elements), so
ratios of 1e70 are ordinary and `exp` overflows float32. The ratio's value is therefore
capped at exp(max_log_ratio) while its gradient keeps its direction (straight-through),
and the capped fraction is reported, so a large ratio is visible but never a NaN.
"""

import math
from dataclasses import dataclass

import torch


@dataclass
class PPOStats:
    """Detached diagnostics of one PPO loss evaluation (cleanrl's names)."""

    approx_kl: torch.Tensor  # 0.5 * mean(log_ratio^2)
    clipfrac: torch.Tensor  # mean(|ratio - 1| > clip_range)
    ratio_mean: torch.Tensor  # mean of the (capped) ratio
    log_ratio_absmax: torch.Tensor  # max |log_ratio|, before capping
    log_ratio_capped_frac: torch.Tensor  # fraction with log_ratio > max_log_ratio


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    max_log_ratio: float = 20.0,
) -> tuple[torch.Tensor, PPOStats]:
    """loss = mean(max(-A * r, -A * clip(r, 1 - eps, 1 + eps))), r = exp(logp - logp_old).

    All inputs are (B,). `old_log_prob` and `advantages` carry no gradient.
    """
    log_ratio = log_prob - old_log_prob.detach()
    excess = (log_ratio - max_log_ratio).clamp(min=0)
    ratio = torch.exp(log_ratio - excess.detach())
    advantages = advantages.detach()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()

    with torch.no_grad():
        # |r - 1| > eps, decided on the log-ratio so that it holds for ratios exp cannot hold.
        # (clip_range 1, AWM's: the lower bound is a ratio of 0, which no finite log-ratio is below)
        lower = math.log1p(-clip_range) if clip_range < 1 else -math.inf
        outside = (log_ratio > math.log1p(clip_range)) | (log_ratio < lower)
        stats = PPOStats(
            approx_kl=0.5 * (log_ratio**2).mean(),
            clipfrac=outside.float().mean(),
            ratio_mean=ratio.mean(),
            log_ratio_absmax=log_ratio.abs().max(),
            log_ratio_capped_frac=(excess > 0).float().mean(),
        )
    return loss, stats
