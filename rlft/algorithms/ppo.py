"""PPO on the denoising MDP (DDPO-IS), as a LightningModule with manual optimization.

One Lightning epoch is one RL epoch: the dataloader yields that epoch's prompts, and
`training_step` samples trajectories without gradients, scores them, turns rewards into
advantages, and runs `num_inner_epochs` of clipped-PPO updates over shuffled trajectories
and, per trajectory, shuffled timesteps.
"""

import math
import time
from collections import defaultdict
from typing import Callable

import lightning as L
import torch
from tqdm.auto import tqdm

from rlft.algorithms.advantages import PerPromptStatTracker, batch_normalized
from rlft.algorithms.evaluation import HeldOutEvaluation
from rlft.algorithms.optimizer_step import clipped_step
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.diffusion.policy import DiffusionPolicy, Trajectories
from rlft.visualize import sample_grid


class PPO(L.LightningModule):
    summary_metric = "reward/mean"  # what train() reports and the HParams tab shows
    def __init__(
        self,
        policy: DiffusionPolicy,
        reward_fn: Callable,
        optimizer: Callable,
        sample_batch_size: int = 32,
        train_batch_size: int = 16,
        gradient_accumulation_steps: int = 1,
        num_inner_epochs: int = 1,
        timestep_fraction: float = 1.0,
        clip_range: float = 1e-4,
        adv_clip_max: float = 5.0,
        max_grad_norm: float = 1.0,
        max_log_ratio: float = 20.0,
        per_prompt_stat_tracking: bool = True,
        stat_buffer_size: int = 32,
        stat_min_count: int = 16,
        log_images_every_n_epochs: int = 5,
        evaluation: HeldOutEvaluation | None = None,
        eval_every_n_epochs: int = 5,
        progress: bool = True,
    ):
        super().__init__()
        # Stored in checkpoints; logger=False because train() logs the whole Hydra config.
        self.save_hyperparameters(ignore=["policy", "reward_fn", "optimizer", "evaluation"], logger=False)
        self.automatic_optimization = False
        self.policy = policy
        self.reward_fn = reward_fn
        self.optimizer_factory = optimizer
        self.sample_batch_size = sample_batch_size
        self.train_batch_size = train_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_inner_epochs = num_inner_epochs
        self.timestep_fraction = timestep_fraction
        self.clip_range = clip_range
        self.adv_clip_max = adv_clip_max
        self.max_grad_norm = max_grad_norm
        self.max_log_ratio = max_log_ratio
        self.stat_tracker = PerPromptStatTracker(stat_buffer_size, stat_min_count) if per_prompt_stat_tracking else None
        self.log_images_every_n_epochs = log_images_every_n_epochs
        self.evaluation = evaluation
        self.eval_every_n_epochs = eval_every_n_epochs
        self.progress = progress
        self.oracle_queries = 0  # every image scored by the reward counts
        self.first_reward_mean = None  # this process's first epoch, for the closing summary
        self.skipped_steps = 0

    def configure_optimizers(self):
        return self.optimizer_factory(self.policy.trainable_parameters())

    # -- one RL epoch --------------------------------------------------------------------
    def training_step(self, prompts: list[str], batch_idx: int):
        t0 = time.perf_counter()
        trajectories = self.sample(prompts)
        t1 = time.perf_counter()
        rewards = self.score(trajectories)
        advantages = self.advantages(trajectories.prompts, rewards)
        t2 = time.perf_counter()
        train_stats = self.update(trajectories, advantages.to(self.device))
        t3 = time.perf_counter()

        metrics = {
            "reward/mean": rewards.mean(),
            "reward/std": rewards.std(unbiased=False),
            "reward/min": rewards.min(),
            "reward/max": rewards.max(),
            "rollout/log_prob_mean": trajectories.log_probs.mean(),
            "rollout/advantage_absmean": advantages.abs().mean(),
            "oracle/queries": float(self.oracle_queries),
            "time/sample_s": t1 - t0,
            "time/reward_s": t2 - t1,
            "time/train_s": t3 - t2,
            **train_stats,
        }
        if self.evaluation is not None and self.eval_every_n_epochs and (
            (self.current_epoch + 1) % self.eval_every_n_epochs == 0 or self.current_epoch == self.trainer.max_epochs - 1
        ):
            show = self.progress and self.trainer.is_global_zero
            metrics["eval/oracle_reward"] = self.evaluation(self.policy, self.trainer.datamodule.eval_prompts, show)[0]
        self.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False, prog_bar=False)
        if self.first_reward_mean is None:
            self.first_reward_mean = float(rewards.mean())
        self.log("reward", float(rewards.mean()), prog_bar=True, logger=False)
        self.log_samples(trajectories, rewards)

    def sample(self, prompts: list[str]) -> Trajectories:
        show = self.progress and self.trainer.is_global_zero
        return self.policy.sample_batched(prompts, self.sample_batch_size, progress=show)

    @torch.no_grad()
    def score(self, trajectories: Trajectories) -> torch.Tensor:
        rewards = torch.as_tensor(self.reward_fn(trajectories.images, trajectories.prompts)).float().cpu()
        self.oracle_queries += len(trajectories)
        if rewards.shape != (len(trajectories),):
            raise ValueError(f"the reward returned shape {tuple(rewards.shape)}; expected ({len(trajectories)},)")
        bad = ~torch.isfinite(rewards)
        if bad.any():
            raise FloatingPointError(
                f"the reward {type(self.reward_fn).__name__} returned {int(bad.sum())} non-finite values "
                f"(e.g. {rewards[bad][:3].tolist()}) for prompts {[trajectories.prompts[i] for i in bad.nonzero()[:3, 0]]}"
            )
        return rewards

    def advantages(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        adv = self.stat_tracker.update(prompts, rewards) if self.stat_tracker else batch_normalized(rewards)
        return adv.clamp(-self.adv_clip_max, self.adv_clip_max)

    def update(self, traj: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        """`num_inner_epochs` of PPO; one optimiser step per `gradient_accumulation_steps`
        micro-batches, each contributing one backward pass per trained timestep."""
        optimizer = self.optimizers()
        batch, num_steps = traj.log_probs.shape
        train_steps = max(1, int(num_steps * self.timestep_fraction))
        window = self.gradient_accumulation_steps * train_steps
        stats, first_update = defaultdict(list), defaultdict(list)
        show = self.progress and self.trainer.is_global_zero
        passes = 0
        bar = tqdm(
            total=self.num_inner_epochs * math.ceil(batch / self.train_batch_size) * train_steps,
            desc="training", leave=False, disable=None if show else True,
        )
        for _ in range(self.num_inner_epochs):
            rows = torch.randperm(batch, device=self.device)
            # Each trajectory gets its own order of timesteps; the first `train_steps` are trained.
            order = torch.argsort(torch.rand(batch, num_steps, device=self.device), dim=1)[:, :train_steps]
            pick = lambda x: x[rows][torch.arange(batch, device=self.device)[:, None], order]  # (B, T, ...) -> (B, train_steps, ...)
            latents, next_latents = pick(traj.latents), pick(traj.next_latents)
            old_log_probs, timesteps = pick(traj.log_probs), pick(traj.timesteps)
            embeds, adv = traj.prompt_embeds[rows], advantages[rows]
            for start in range(0, batch, self.train_batch_size):
                mb = slice(start, start + self.train_batch_size)
                for j in range(train_steps):
                    log_prob = self.policy.log_prob(latents[mb, j], next_latents[mb, j], timesteps[mb, j], embeds[mb])
                    loss, step_stats = ppo_clip_loss(log_prob, old_log_probs[mb, j], adv[mb], self.clip_range, self.max_log_ratio)
                    self.manual_backward(loss / window)
                    passes += 1
                    record = {"loss": loss.detach(), **vars(step_stats)}
                    for k, v in record.items():
                        stats[k].append(v)
                        if passes <= window:  # weights still those that sampled the batch
                            first_update[k].append(v)
                    if passes % window == 0:
                        stats["grad_norm"].append(self.optimizer_step(optimizer))
                    bar.update()
        bar.close()
        out = {}
        for k, values in stats.items():
            values = torch.stack(values).float()
            out[f"train/{k}"] = values.max() if k == "log_ratio_absmax" else values.mean()
        out["train/approx_kl_first_update"] = torch.stack(first_update["approx_kl"]).mean()
        out["train/clipfrac_first_update"] = torch.stack(first_update["clipfrac"]).mean()
        out["health/skipped_steps"] = float(self.skipped_steps)
        return out

    def optimizer_step(self, optimizer) -> torch.Tensor:
        grad_norm, stepped = clipped_step(optimizer, self.policy.trainable_parameters(), self.max_grad_norm)
        self.skipped_steps += not stepped
        return grad_norm

    def log_samples(self, traj: Trajectories, rewards: torch.Tensor) -> None:
        every = self.log_images_every_n_epochs
        last_epoch = self.current_epoch == self.trainer.max_epochs - 1
        if not every or (self.current_epoch % every and not last_epoch):
            return
        if self.logger is None or not hasattr(self.logger.experiment, "add_figure"):
            return
        self.logger.experiment.add_figure("samples", sample_grid(traj.images, traj.prompts, rewards), self.current_epoch)

    # -- checkpoints ---------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rlft"] = {
            "stat_tracker": self.stat_tracker.state_dict() if self.stat_tracker else None,
            "oracle_queries": self.oracle_queries,
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rlft", {})
        if self.stat_tracker and state.get("stat_tracker"):
            self.stat_tracker.load_state_dict(state["stat_tracker"])
        self.oracle_queries = state.get("oracle_queries", 0)
        self.skipped_steps = state.get("skipped_steps", 0)
