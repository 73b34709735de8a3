"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) as its public code runs it
(NVlabs/DiffusionNFT `scripts/train_nft_sd3.py`, `config/nft.py`): likelihood-free, trained on
the forward process of the clean samples only (no log-probability, no stored trajectory).

Each sample's reward becomes an optimality probability r = clip(1/2 + A / (2 * adv_clip_max), 0, 1)
from its advantage A (the group's mean subtracted; divided by the whole batch's std with
`global_std`, the public default). A clean latent x_0 is noised forward,
x_t = (1 - sigma) x_0 + sigma * eps (rectified flow), and with the old policy's velocity v_old
(frozen) and the trained v_theta, the implicit positive and negative policies

    v+ = (1 - beta) v_old + beta v_theta        v- = (1 + beta) v_old - beta v_theta

are both regressed onto the flow-matching target, the positive weighted by r and the negative
by 1 - r:  policy_loss = adv_clip_max * [r * l(v+) + (1 - r) * l(v-)] / beta (the public code
scales by adv_clip_max). l is the x_0-prediction error |x_t - sigma v - x_0|^2
(= sigma^2 |v - (eps - x_0)|^2), divided by its own detached mean absolute value (the adaptive
weighting; `adaptive_weight=False` leaves the plain squared error). To it the public code adds
`kl_weight * |v_theta - v_ref|^2` to the base model (the LoRA disabled).

The old policy is a second adapter of the same denoiser (`rlft.diffusion.reference`): it
samples every epoch's batch, starts equal to the trained weights, and after each epoch's update
moves towards them, old <- decay * old + (1 - decay) * theta, with a decay that ramps with the
optimizer steps taken (`old_policy_decay`; the public `decay_type` 0, 1 or 2). The sampler is the
policy's (`policy.deterministic=true, ode_solver=dpm2` is the public one; the method is solver
agnostic) and the trained timesteps are the sampled steps'. DiffusionNFT is CFG-free
(policy.guidance_scale=1). Its evaluation EMA (`algorithm.ema_decay`) is the pipeline's. Flow
models only: on a DDIM model the forward process and target are those of noise prediction,
which this loss does not define.
"""

import torch
from omegaconf import DictConfig

from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.diffusion.flow import step_sigmas
from rlft.diffusion.gaussian import per_sample
from rlft.algorithms.old_policy import decay_schedule, old_policy_decay
from rlft.diffusion.reference import base_reference, snapshot
from rlft.checks import as_config_error, check

def optimality_probability(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """A in [-adv_clip_max, adv_clip_max] -> r in [0, 1] (1/2 at the group's mean)."""
    return (0.5 + 0.5 * advantages / adv_clip_max).clamp(0, 1)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x_0: torch.Tensor, sigma: torch.Tensor,
             r: torch.Tensor, beta: float, adaptive_weight: bool = True, scale: float = 1.0,
             v_ref: torch.Tensor | None = None, kl_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, ...) velocities and latents, `sigma` (B,) noise levels, `r` (B,) in [0, 1].
    scale * mean([r l(v+) + (1 - r) l(v-)] / beta) + kl_weight * mean(|v_theta - v_ref|^2)."""
    v_old = v_old.detach()
    sigma = per_sample(sigma, x_t)
    dims = tuple(range(1, x_t.ndim))

    def error(v):  # the x_0-prediction error of velocity v, per sample
        prediction = x_t - sigma * v
        squared = (prediction - x_0) ** 2
        if adaptive_weight:  # in float64, as the public code
            scale = (prediction.detach().double() - x_0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
            squared = squared / scale
        return squared.mean(dim=dims)

    positive = error((1 - beta) * v_old + beta * v_theta)
    negative = error((1 + beta) * v_old - beta * v_theta)
    unscaled = r * positive / beta + (1 - r) * negative / beta
    loss = (unscaled * scale).mean()
    stats = {"positive_loss": positive.detach().mean(), "negative_loss": negative.detach().mean(),
             "optimality_mean": r.detach().mean(), "policy_loss": loss.detach(),
             "old_deviation": ((v_theta.detach() - v_old) ** 2).mean()}
    if v_ref is not None:
        kl = ((v_theta - v_ref.detach()) ** 2).mean(dim=dims).mean()
        loss = loss + kl_weight * kl
        stats["kl"] = kl.detach()
    return loss, stats


class NFT(OnlineRL):
    config_only_keys = (*OnlineRL.config_only_keys, "sampling")  # the policy's default sampler under it
    needs_stochastic_steps = False  # trained on the forward process: any sampler, deterministic included

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        cls.check_flow_model(cfg, "DiffusionNFT")
        super().check_config(cfg, node, where)
        a, p = cfg.algorithm, cfg.policy
        check(p.guidance_scale == 1, "policy.guidance_scale", p.guidance_scale,
              "must be 1 for algorithm=nft: DiffusionNFT is CFG-free, it trains and samples the conditional velocity")
        check(a.beta > 0, "algorithm.beta", a.beta, "must be > 0 (the public code's default is 1)")
        with as_config_error():
            decay_schedule(a.get("decay_type"), None if a.get("decay") is None else list(a.decay))

    @classmethod
    def evals_per_trained_step(cls, cfg: DictConfig) -> int:
        return 4 + (1 if cfg.algorithm.kl_weight else 0)  # the old policy's forward, and the base's for the KL

    def __init__(self, group_size: int = 8, beta: float = 1.0, adaptive_weight: bool = True, kl_weight: float = 1e-4,
                 decay_type: int | None = 1, decay: list | None = None, scale_by_adv_clip_max: bool = True, **kwargs):
        super().__init__(group_size=group_size, **kwargs)
        if self.policy.family != "flow":
            raise ValueError(f"algorithm=nft trains rectified-flow models (model.family=flow); this model is "
                             f"{self.policy.family}: use model=digits_flow (or an SD3 model), or another algorithm")
        self.beta, self.adaptive_weight, self.kl_weight = beta, adaptive_weight, kl_weight
        self.schedule = decay_schedule(decay_type, decay)
        self.scale = self.adv_clip_max if scale_by_adv_clip_max else 1.0
        # The old policy: equal to the trained weights now. Adding its adapter draws initial weights
        # (overwritten at once): from a forked RNG, so that the run's random stream is untouched.
        with torch.random.fork_rng(devices=[]):
            self.old = snapshot(self.policy)
        self.reference = base_reference(self.policy) if kl_weight else None

    def sampling_weights(self):
        return self.old.active(self.policy)

    def update(self, traj, advantages) -> dict[str, float]:
        stats = super().update(traj, advantages)
        decay = old_policy_decay(self.optimizer_steps, *self.schedule)
        self.old.soft_update(self.policy, decay)
        return {**stats, "train/old_decay": decay}

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_0 = mb.final_latents.float()
        sigma, _ = step_sigmas(self.policy.scheduler, mb.timesteps)
        x_t = (1 - per_sample(sigma, x_0)) * x_0 + per_sample(sigma, x_0) * torch.randn_like(x_0)
        with torch.no_grad():
            v_old = self.old.predict(self.policy, x_t, mb.timesteps, mb.embeds).float()
        v_theta = self.policy.predict(x_t, mb.timesteps, mb.embeds).float()
        v_ref = None
        if self.reference is not None:
            with torch.no_grad():
                v_ref = self.reference.predict(self.policy, x_t, mb.timesteps, mb.embeds).float()
        r = optimality_probability(mb.advantages, self.adv_clip_max)
        return nft_loss(v_theta, v_old, x_t, x_0, sigma, r, self.beta, self.adaptive_weight, self.scale,
                        v_ref, self.kl_weight)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rlft"]["nft"] = {"old": self.old.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rlft", {}).get("nft")
        if state is None:
            return
        self.old.load_state_dict(state["old"])
