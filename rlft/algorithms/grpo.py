"""GRPO on the denoising MDP (Flow-GRPO, DanceGRPO): no critic and no running statistics.

Each prompt is sampled `group_size` times in an epoch (`data.group_size`, consecutive samples),
each reward is compared with its group's (`rlft.algorithms.advantages.group_normalized`), and
the loss is PPO's clipped one plus `kl_weight` times the KL of each trained transition to the
reference policy at the same x_t, `(mean - mean_ref)^2 / (2 std^2)` reduced like the
log-probability (Flow-GRPO's `beta` term). The reference is the base model: the policy's own
denoiser with its LoRA adapter disabled, never a copy of the network (under full fine-tuning,
one frozen copy of the untrained parameters).

`kl_form`: `exact` (the default) is the KL of the two step Gaussians; `without_dt` is flow_grpo's
term as its `train_sd3.py` at ac4c86e8 writes it, `mean((mean - mean_ref)^2) / (2 std_dev_t^2)` with
`std_dev_t` the flow step's noise scale without the step's `sqrt(sigma - sigma_next)`, i.e. the exact
KL times `sigma - sigma_next`: the form under which a published `beta` means what it says.

`guard`: GRPO-Guard's ratio normalisation (Wang et al. 2025, arXiv 2510.22319, as Flow-Factory's
`GRPOGuardTrainer` computes it), `guard_log_ratio`, for the over-optimisation that the SDE step's
negatively biased ratios drive.
"""

import torch
from omegaconf import DictConfig

from rlft.algorithms.pipeline import MicroBatch
from rlft.algorithms.ppo import PPO
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.checks import check
from rlft.diffusion.flow import step_sigmas
from rlft.diffusion.gaussian import KL_FORMS, gaussian_kl_equal_std, kl_std, reduce_over_sample
from rlft.diffusion.reference import base_reference


def grpo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, mean: torch.Tensor,
              ref_mean: torch.Tensor | None, std: torch.Tensor, clip_range: float, kl_weight: float,
              reduction: str, max_log_ratio: float = 20.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped loss + kl_weight * mean(KL(policy || reference)); `ref_mean` None: no KL term."""
    loss, stats = ppo_clip_loss(log_prob, old_log_prob, advantages, clip_range, max_log_ratio)
    stats = vars(stats)
    if ref_mean is not None:
        kl = gaussian_kl_equal_std(mean, ref_mean.detach(), std, reduction).mean()
        loss = loss + kl_weight * kl
        stats["kl"] = kl.detach()
    return loss, stats


def guard_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, mean: torch.Tensor, old_mean: torch.Tensor,
                    std: torch.Tensor, reduction: str) -> torch.Tensor:
    """GRPO-Guard's log-ratio, (B,): (logp - logp_old) * s + |mean - mean_old|^2 / (2 s), s the step's
    std, the squared drift reduced like the log-probability. The plain log-ratio of a sampled step is
    -<eps, d> / s - |d|^2 / (2 s^2) (d = mean - mean_old, eps the step's noise): biased below 0 by the
    KL and scaled by 1 / s, which varies across steps. This one is -<eps, d>: mean 0 whatever the
    drift, and the same scale at every step."""
    s = std.flatten(1)[:, 0]
    drift = reduce_over_sample((mean - old_mean.detach()) ** 2, reduction)
    return (log_prob - old_log_prob.detach()) * s + drift / (2 * s)


class GRPO(PPO):
    def __init__(self, group_size: int = 8, kl_weight: float = 0.04, kl_form: str = "exact", guard: bool = False,
                 **kwargs):
        super().__init__(group_size=group_size, **kwargs)
        self.guard = guard
        self.policy.record_means = guard  # the ratio's normalisation needs each step's sampling-time mean
        if kl_form not in KL_FORMS:
            raise ValueError(f"algorithm.kl_form={kl_form!r} is not a form: valid are {list(KL_FORMS)}")
        if kl_form == "without_dt" and self.policy.family != "flow":
            raise ValueError("algorithm.kl_form=without_dt is flow_grpo's form for rectified-flow models; this model "
                             "samples with DDIM: use kl_form=exact")
        self.kl_weight, self.kl_form = kl_weight, kl_form
        self.reference = base_reference(self.policy)  # built from the base: still untrained here

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        a = cfg.algorithm
        check(isinstance(a.guard, bool), "algorithm.guard", a.guard, "must be true or false")
        check(a.kl_form in KL_FORMS, "algorithm.kl_form", a.kl_form, f"must be one of {list(KL_FORMS)}")
        check(a.kl_form == "exact" or cfg.model.get("family", "ddim") == "flow", "algorithm.kl_form", a.kl_form,
              f"is flow_grpo's form for rectified-flow models, and model={cfg.model.name} samples with DDIM: use exact")
        check(not (cfg.policy.get("sde_type", "sde") == "cps" and a.kl_form != "exact"), "algorithm.kl_form",
              a.kl_form, "must be exact with policy.sde_type=cps (flow_grpo's without_dt form is the SDE step's)")

    @classmethod
    def evals_per_trained_step(cls, cfg: DictConfig) -> int:
        return 3 + (1 if cfg.algorithm.kl_weight else 0)  # the base's forward for the KL

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        step = self.policy.transition(mb.latents, mb.next_latents, mb.timesteps, mb.embeds)
        # kl_weight = 0 skips the reference's forward (its cost is one more forward pass a step).
        ref = self.policy.transition(mb.latents, mb.next_latents, mb.timesteps, mb.embeds, self.reference) if self.kl_weight else None
        std = step.std
        if ref is not None and self.kl_form != "exact":
            std = kl_std(step.std, *step_sigmas(self.policy.scheduler, mb.timesteps), self.kl_form)
        log_prob, old_log_prob = step.log_prob, mb.old_log_probs
        if self.guard:  # the clipped loss then sees the normalised log-ratio
            log_prob = guard_log_ratio(log_prob, old_log_prob, step.mean, mb.old_means, step.std, self.policy.reduction)
            old_log_prob = torch.zeros_like(log_prob)
        return grpo_loss(log_prob, old_log_prob, mb.advantages, step.mean, ref.mean if ref else None,
                         std, self.clip_range, self.kl_weight, self.policy.reduction, self.max_log_ratio)
