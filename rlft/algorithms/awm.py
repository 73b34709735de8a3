"""Advantage Weighted Matching (AWM; Xue et al. 2025, arXiv 2509.25050) as its public code runs
it (scxue/advantage_weighted_matching `scripts/train_sd3_awm.py`, `config/dgx_awm.py`).

Policy gradient with the flow-matching loss as the log-likelihood: each clean sample x_0 is
noised forward at a few training times t, x_t = (1 - t) x_0 + t eps, and its "log-probability"
is the negative matching error of the velocity, weighted by t,

    log p = w(t, mean(|v_theta(x_t) - (eps - x_0)|^2))       (`awm_log_prob`; the public weightings)

which PPO's clipped loss then raises for samples with a positive advantage and lowers for the
others (the public `exp_first`: one ratio per sample and time). The old log-probability is the
same quantity under the weights that start the epoch's update, on the same noise and times. The
training times are `train_timesteps` of the sampled schedule, one drawn from each of as many equal
strata of its first `timestep_fraction` (the public `discrete`; `discrete_wo_init` leaves the first
step out), the same for every sample of a micro-batch. Regularisers as published: `kl_weight`
times `mean |v_theta - v_base|^2` to the base, and `ema_kl_weight` times `mean |v_theta - v_ema|^2`
to an adapter that follows the trained weights after each epoch (`ema <- d ema + (1 - d) theta`,
d = min(0.001 * step, `ema_kl_max_decay`)); evaluation samples with the pipeline's EMA of the trained
weights (`algorithm.ema_decay`, public 0.99). The advantages are clipped to `adv_clip_max` and
rescaled to `advantage_max`. It needs no log-probability from the sampler: any solver samples,
deterministic included. Flow models only (the matching target is the velocity's).
"""

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from rlft.algorithms.old_policy import old_policy_decay
from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.diffusion.flow import step_sigmas
from rlft.diffusion.gaussian import per_sample
from rlft.types import Trajectories
from rlft.diffusion.reference import base_reference, snapshot
from rlft.run.preemption import stop_if_requested
from rlft.checks import check

WEIGHTINGS = ("uniform", "t", "t**2", "huber", "ghuber")
TIME_TYPES = ("discrete", "discrete_wo_init")


def awm_log_prob(v: torch.Tensor, noise: torch.Tensor, x_0: torch.Tensor, t: torch.Tensor, weighting: str = "ghuber",
                 ghuber_power: float = 0.25) -> torch.Tensor:
    """(B,) the weighted negative matching error, in float64 as the public code: with
    e = mean(|v - (noise - x_0)|^2) over a sample's elements, uniform -e, t: -e t, t**2: -e t^2,
    huber: -(sqrt(e + 1e-10) - 1e-5) t, ghuber: -((e + 1e-10)^p - 1e-10^p) t / p."""
    e = ((v.double() - (noise.double() - x_0.double())) ** 2).mean(dim=tuple(range(1, v.ndim)))
    t = t.double()
    if weighting == "uniform":
        return -e
    if weighting == "t":
        return -e * t
    if weighting == "t**2":
        return -e * t**2
    if weighting == "huber":
        return -(torch.sqrt(e + 1e-10) - 1e-5) * t
    if weighting == "ghuber":
        tiny = torch.tensor(1e-10, dtype=torch.float64)
        return -(torch.pow(e + tiny, ghuber_power) - torch.pow(tiny, ghuber_power)) * t / ghuber_power
    raise ValueError(f"algorithm.weighting={weighting!r} is not a weighting: valid are {list(WEIGHTINGS)}")


def training_indices(num_steps: int, count: int, fraction: float, time_type: str) -> torch.Tensor:
    """`count` step indices of a `num_steps` schedule, one uniformly drawn from each of `count`
    equal strata of [0, int(num_steps * fraction)) (`discrete`) or [1, ...) (`discrete_wo_init`),
    with the public code's float bounds truncated to integers."""
    first = 0 if time_type == "discrete" else 1
    bounds = torch.linspace(first, int(num_steps * fraction), count + 1)
    lower, upper = bounds[:-1].long(), bounds[1:].long()
    return lower + (torch.rand(count) * (upper - lower)).long()


@dataclass
class MatchingBatch(MicroBatch):
    """One micro-batch at one training time: `latents` is x_t, `final_latents` x_0, `noise` eps,
    `old_log_probs` the matching log-probability under the weights that start the update."""

    noise: torch.Tensor | None = None


class AWM(OnlineRL):
    config_only_keys = (*OnlineRL.config_only_keys, "sampling")  # the policy's default sampler under it
    first_update_stats = ("approx_kl", "clipfrac")
    needs_stochastic_steps = False  # trained on the forward process: any sampler, deterministic included

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        cls.check_flow_model(cfg, "AWM")
        super().check_config(cfg, node, where)
        a, p = cfg.algorithm, cfg.policy
        check(a.weighting in WEIGHTINGS, "algorithm.weighting", a.weighting, f"must be one of {list(WEIGHTINGS)}")
        check(a.time_type in TIME_TYPES, "algorithm.time_type", a.time_type, f"must be one of {list(TIME_TYPES)}")
        available = int(p.num_steps * a.timestep_fraction) - (a.time_type == "discrete_wo_init")
        check(isinstance(a.train_timesteps, int) and 1 <= a.train_timesteps <= available, "algorithm.train_timesteps",
              a.train_timesteps, f"must be an integer in [1, {available}]: one time from each stratum of the "
              f"first int(timestep_fraction * policy.num_steps) steps")
        check(0 < a.clip_range <= 1, "algorithm.clip_range", a.clip_range, "must be in (0, 1] (public: 1)")
        check(a.advantage_max > 0, "algorithm.advantage_max", a.advantage_max, "must be > 0")
        check(a.ema_kl_weight >= 0, "algorithm.ema_kl_weight", a.ema_kl_weight, "must be >= 0 (0: no EMA term)")
        check(0 <= a.ema_kl_max_decay < 1, "algorithm.ema_kl_max_decay", a.ema_kl_max_decay, "must be in [0, 1)")
        check(p.guidance_scale == 1, "policy.guidance_scale", p.guidance_scale,
              "must be 1 for algorithm=awm: the public runs train and sample the conditional velocity")

    @classmethod
    def trained_steps_per_sample(cls, cfg: DictConfig, window: int) -> int:
        return cfg.algorithm.train_timesteps

    @classmethod
    def evals_per_trained_step(cls, cfg: DictConfig) -> int:
        # the old log-probability's forward (same noise and time), the base's for the KL, the EMA adapter's
        a = cfg.algorithm
        return 4 + (1 if a.kl_weight else 0) + (1 if a.ema_kl_weight else 0)

    def __init__(self, group_size: int = 8, train_timesteps: int = 6, time_type: str = "discrete",
                 weighting: str = "ghuber", ghuber_power: float = 0.25, clip_range: float = 1.0,
                 advantage_max: float = 1.0, kl_weight: float = 1e-4, ema_kl_weight: float = 1.0,
                 ema_kl_max_decay: float = 0.3, **kwargs):
        super().__init__(group_size=group_size, **kwargs)
        if self.policy.family != "flow":
            raise ValueError(f"algorithm=awm matches rectified-flow velocities (model.family=flow); this model is "
                             f"{self.policy.family}: use model=digits_flow (or another flow model), or another algorithm")
        self.train_timesteps, self.time_type = train_timesteps, time_type
        self.weighting, self.ghuber_power = weighting, ghuber_power
        self.clip_range, self.advantage_max = clip_range, advantage_max
        self.kl_weight, self.ema_kl_weight, self.ema_kl_max_decay = kl_weight, ema_kl_weight, ema_kl_max_decay
        self.reference = base_reference(self.policy) if kl_weight else None
        with torch.random.fork_rng(devices=[]):  # adding the adapter draws weights; the run's stream untouched
            self.ema_policy = snapshot(self.policy) if ema_kl_weight else None

    def trained_steps(self, num_steps: int) -> int:
        return self.train_timesteps

    def training_passes(self, traj: Trajectories, advantages: torch.Tensor, train_steps: int):
        """Per inner epoch: the batch shuffled; for each micro-batch its training times and noise
        drawn and the old log-probabilities computed before any update; then its passes."""
        batch, num_steps = traj.timesteps.shape
        for _ in range(self.num_inner_epochs):
            rows = torch.randperm(batch, device=self.device)
            prepared = [self.prepare(traj, rows[start : start + self.train_batch_size], advantages, num_steps)
                        for start in range(0, batch, self.train_batch_size)]
            for passes in prepared:
                stop_if_requested(self.attached_trainer)
                yield from passes

    @torch.no_grad()
    def prepare(self, traj: Trajectories, rows: torch.Tensor, advantages: torch.Tensor, num_steps: int) -> list:
        indices = training_indices(num_steps, self.train_timesteps, self.timestep_fraction, self.time_type)
        # (host memory under algorithm.offload: the rows are taken there, then brought over)
        x_0 = self.fetch(traj.final_latents[rows.to(traj.final_latents.device)])
        embeds = traj.prompt_embeds.map(lambda x: self.fetch_embedding(x[rows.to(x.device)]))
        adv = advantages[rows].clamp(-self.adv_clip_max, self.adv_clip_max) / self.adv_clip_max * self.advantage_max
        passes = []
        for index in indices.tolist():
            timesteps = traj.timesteps[rows, index]
            sigma, _ = step_sigmas(self.policy.scheduler, timesteps)
            noise = torch.randn_like(x_0)
            x_t = (1 - per_sample(sigma, x_0)) * x_0 + per_sample(sigma, x_0) * noise
            v = self.policy.predict(x_t, timesteps, embeds).float()
            old = awm_log_prob(v, noise, x_0, sigma, self.weighting, self.ghuber_power)
            passes.append(MatchingBatch(x_t, None, timesteps, old, embeds, adv, x_0, noise=noise))
        return passes

    def loss(self, mb: MatchingBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sigma, _ = step_sigmas(self.policy.scheduler, mb.timesteps)
        v = self.policy.predict(mb.latents, mb.timesteps, mb.embeds).float()
        log_prob = awm_log_prob(v, mb.noise, mb.final_latents, sigma, self.weighting, self.ghuber_power)
        loss, stats = ppo_clip_loss(log_prob, mb.old_log_probs, mb.advantages.double(), self.clip_range)
        stats = {**vars(stats), "matching_error": ((v.detach() - (mb.noise - mb.final_latents)) ** 2).mean()}
        for name, reference, weight in (("kl", self.reference, self.kl_weight),
                                        ("ema_kl", self.ema_policy, self.ema_kl_weight)):
            if reference is None:
                continue
            with torch.no_grad():
                v_ref = reference.predict(self.policy, mb.latents, mb.timesteps, mb.embeds).float()
            term = ((v - v_ref) ** 2).mean(dim=tuple(range(1, v.ndim))).mean()
            loss = loss + weight * term
            stats[name] = term.detach()
        return loss.float(), stats

    def update(self, traj, advantages) -> dict[str, float]:
        stats = super().update(traj, advantages)
        if self.ema_policy is None:
            return stats
        decay = old_policy_decay(self.optimizer_steps, 0, 0.001, self.ema_kl_max_decay)  # the public linear ramp
        self.ema_policy.soft_update(self.policy, decay)
        return {**stats, "train/ema_kl_decay": decay}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["rlft"]["awm"] = {"ema_policy": self.ema_policy.state_dict() if self.ema_policy else None}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("rlft", {}).get("awm")
        if state is None:
            return
        if self.ema_policy is not None and state["ema_policy"] is not None:
            self.ema_policy.load_state_dict(state["ema_policy"])
