"""DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117): likelihood-free, trained on the forward
process of the clean samples only (no log-probability, no stored trajectory is needed).

Each sample's reward becomes an optimality probability r = clip(1/2 + A / (2 * adv_clip_max), 0, 1)
from its advantage A (group-normalised, as GRPO's). A clean latent x_0 is noised forward,
x_t = (1 - sigma) x_0 + sigma * eps (rectified flow), and with the sampling-time policy's
velocity v_old (frozen) and the trained v_theta, the implicit positive and negative policies

    v+ = (1 - beta) v_old + beta v_theta        v- = (1 + beta) v_old - beta v_theta

are both regressed onto the flow-matching target, the positive weighted by r and the negative
by 1 - r:  loss = [r * l(v+) + (1 - r) * l(v-)] / beta. Here l is the x_0-prediction error
|x_t - sigma v - x_0|^2 (= sigma^2 |v - (eps - x_0)|^2), divided by its own detached mean
absolute value (the adaptive weighting of the public code); `adaptive_weight=False` leaves
the plain squared error. The velocity is the conditional one: DiffusionNFT is CFG-free, so
it runs with policy.guidance_scale=1.

v_old is the policy that sampled the epoch's batch: a snapshot of its LoRA weights in a
second adapter (`rlft.diffusion.reference.snapshot`), taken before each epoch's update. (The
paper's soft update of the old policy, an EMA of the weights, is not implemented: old = the
sampling policy.) The trained timesteps are those the sampler stochastically stepped through,
`timestep_fraction` of them per sample, as for the other algorithms. Flow models only: on a
DDIM model the forward process and target are those of noise prediction, which this loss
does not define.
"""

import torch

from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.diffusion.flow import step_sigmas
from rlft.diffusion.gaussian import per_sample
from rlft.diffusion.policy import Trajectories
from rlft.diffusion.reference import snapshot


def optimality_probability(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """A in [-adv_clip_max, adv_clip_max] -> r in [0, 1] (1/2 at the group's mean)."""
    return (0.5 + 0.5 * advantages / adv_clip_max).clamp(0, 1)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x_0: torch.Tensor, sigma: torch.Tensor,
             r: torch.Tensor, beta: float, adaptive_weight: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(B, C, H, W) velocities and latents, `sigma` (B,) noise levels, `r` (B,) in [0, 1]."""
    v_old = v_old.detach()
    sigma = per_sample(sigma, x_t)

    def error(v):  # the x_0-prediction error of velocity v, per sample
        squared = (x_t - sigma * v - x_0) ** 2
        if adaptive_weight:
            scale = (x_t - sigma * v - x_0).detach().abs().mean(dim=(1, 2, 3), keepdim=True).clamp(min=1e-5)
            squared = squared / scale
        return squared.mean(dim=(1, 2, 3))

    positive = error((1 - beta) * v_old + beta * v_theta)
    negative = error((1 + beta) * v_old - beta * v_theta)
    loss = ((r * positive + (1 - r) * negative) / beta).mean()
    return loss, {"positive_loss": positive.detach().mean(), "negative_loss": negative.detach().mean(),
                  "optimality_mean": r.detach().mean()}


class NFT(OnlineRL):
    def __init__(self, group_size: int = 8, beta: float = 1.0, adaptive_weight: bool = True, **kwargs):
        super().__init__(group_size=group_size, **kwargs)
        if self.policy.family != "flow":
            raise ValueError(f"algorithm=nft trains rectified-flow models (model.family=flow); this model is "
                             f"{self.policy.family}: use model=digits_flow (or an SD3 model), or another algorithm")
        self.beta, self.adaptive_weight = beta, adaptive_weight
        self.old = None  # the sampling-time policy, snapshot at each update

    def update(self, traj: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        # The weights that sampled `traj`. Adding the adapter (first epoch of a process) draws its
        # initial weights: from a forked RNG, so that a resumed run's noise is an uninterrupted one's.
        with torch.random.fork_rng(devices=[self.device.index or 0] if self.device.type == "cuda" else []):
            self.old = snapshot(self.policy)
        return super().update(traj, advantages)

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_0 = mb.final_latents.float()
        sigma, _ = step_sigmas(self.policy.scheduler, mb.timesteps)
        x_t = (1 - per_sample(sigma, x_0)) * x_0 + per_sample(sigma, x_0) * torch.randn_like(x_0)
        v_theta = self.policy.predict(x_t, mb.timesteps, mb.embeds).float()
        with torch.no_grad():
            v_old = self.old.predict(self.policy, x_t, mb.timesteps, mb.embeds).float()
        r = optimality_probability(mb.advantages, self.adv_clip_max)
        return nft_loss(v_theta, v_old, x_t, x_0, sigma, r, self.beta, self.adaptive_weight)
