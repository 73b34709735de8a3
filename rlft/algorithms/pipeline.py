"""What every sampling-based algorithm shares, as one LightningModule with manual optimization:
sample -> score -> advantages -> update, with logging, evaluation, checkpoints and resume.

One Lightning epoch is one RL epoch: the dataloader yields that epoch's prompts, and
`training_step` samples trajectories without gradients, scores them (each answer on disk
before it is used), turns rewards into advantages, and runs `num_inner_epochs` of updates over
shuffled trajectories and, per trajectory, shuffled timesteps. An algorithm is what it puts in
`loss` (one micro-batch at one timestep per trajectory) and, where it differs, `advantages`:
PPO (`rlft.algorithms.ppo`), GRPO, DDPO-SF, RWR, DiffusionNFT.
"""

import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from omegaconf import DictConfig

from rlft.run.progress import phase_bar
from rlft.algorithms.advantages import PerPromptStatTracker, batch_normalized, group_normalized
from rlft.algorithms.base import RLModule
from rlft.algorithms.evaluation import HeldOutEvaluation, mean_of_finite
from rlft.algorithms.evaluation_ema import ema_weights, evaluation_ema
from rlft.algorithms.health import NonFiniteGuard, finite_mean
from rlft.algorithms.optimizer_step import clipped_step
from rlft.algorithms.queries import query_fresh_samples
from rlft.algorithms.scored_sampling import sample_and_score
from rlft.checks import check
from rlft.diffusion.noise import sample_generators
from rlft.diffusion.policy import DiffusionPolicy
from rlft.memory.host import check_host_memory, trajectory_bytes
from rlft.models.loading import DTYPES
from rlft.rewards.learned import LearnedReward
from rlft.rewards.scorer import Scorer
from rlft.run.distributed import (check_sharding, gather, grad_sync, mean_over_ranks, rank_and_world, shard,
                                  sum_over_ranks, world_size)
from rlft.run.preemption import stop_if_requested
from rlft.diffusion.dtensors import gathered, sharded_like
from rlft.run.sharding import uses_fsdp2
from rlft.types import PromptEmbeds, Trajectories


log = logging.getLogger(__name__)


@dataclass
class MicroBatch:
    """One micro-batch of stored transitions at one trained timestep per trajectory: what an
    algorithm's `loss` sees. (b, ...) each; `final_latents` are the samples' clean latents."""

    latents: torch.Tensor  # x_t
    next_latents: torch.Tensor  # x_t' (the sampled step)
    timesteps: torch.Tensor  # (b,)
    old_log_probs: torch.Tensor  # (b,) at sampling time
    embeds: PromptEmbeds
    advantages: torch.Tensor  # (b,): advantages, or RWR's weights
    final_latents: torch.Tensor
    old_means: torch.Tensor | None = None  # the step's mean at sampling time (policy.record_means: GRPO-Guard)


class OnlineRL(RLModule):
    """The shared pipeline; subclasses define `loss` (and may change `advantages`,
    `accumulation_window`, `update`). Its arguments are every algorithm's."""

    moves_sde_window = True
    first_update_stats: tuple[str, ...] = ()  # loss stats also reported over the first optimizer step only
    max_stats: tuple[str, ...] = ()  # loss stats reported as a maximum (others: a mean)

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
        adv_clip_max: float = 5.0,
        max_grad_norm: float = 1.0,
        per_prompt_stat_tracking: bool = True,
        group_size: int = 1,
        std_normalize: bool = True,
        global_std: bool = False,
        stat_buffer_size: int = 32,
        stat_min_count: int = 16,
        log_images_every_n_epochs: int = 5,
        evaluation: HeldOutEvaluation | None = None,
        eval_every_n_epochs: int = 5,
        async_reward: bool = True,
        offload: bool = False,
        storage_dtype: str | None = None,
        health: NonFiniteGuard | None = None,
        ema_decay: float | None = None,
        progress: bool = True,
        seed: int = 0,
    ):
        super().__init__(policy, optimizer, evaluation, health, log_images_every_n_epochs, progress, seed)
        # Stored in checkpoints; logger=False because train() logs the whole Hydra config.
        self.save_hyperparameters(ignore=["policy", "reward_fn", "optimizer", "evaluation", "health"], logger=False)
        self.reward_fn = reward_fn
        self.scorer = Scorer(reward_fn)  # (B, K) answers: K = 1, or reward=multi's components
        self.sample_batch_size = sample_batch_size
        self.train_batch_size = train_batch_size
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.num_inner_epochs = num_inner_epochs
        self.timestep_fraction = timestep_fraction
        self.adv_clip_max = adv_clip_max
        self.max_grad_norm = max_grad_norm
        # group_size > 1: each prompt is sampled group_size times (data.group_size) and rewards are
        # compared within their group (GRPO); else with the prompt's running statistics (DDPO).
        self.group_size = group_size
        self.std_normalize = std_normalize
        self.global_std = global_std  # groups' advantages divided by the batch's std (flow_grpo's global_std)
        tracked = per_prompt_stat_tracking and group_size == 1
        self.stat_tracker = PerPromptStatTracker(stat_buffer_size, stat_min_count) if tracked else None
        # reward=multi with combine=advantages: each component normalised on its own, with a tracker each.
        self.component_trackers = ({n: PerPromptStatTracker(stat_buffer_size, stat_min_count) for n in self.scorer.components}
                                   if self.scorer.separate_advantages and tracked else None)
        self.eval_every_n_epochs = eval_every_n_epochs
        self.async_reward = async_reward
        self.offload, self.storage_dtype = offload, storage_dtype  # where and how the epoch's trajectories are kept
        self.learned = reward_fn if isinstance(reward_fn, LearnedReward) else None  # reward=ensemble
        self.fit_metrics: dict[str, float] = {}  # the learned reward's fit before this epoch
        self.epoch_steps = self.epoch_skipped_steps = 0
        self.optimizer_steps = 0  # every optimizer step of the run, skipped ones included (DiffusionNFT's decay ramp)
        # An EMA of the trained weights, stepped with every optimizer step, that evaluation samples with.
        self.ema_decay = ema_decay
        self.ema = evaluation_ema(policy.trainable_parameters(), ema_decay) if ema_decay is not None else None

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        a, d = cfg.algorithm, cfg.data
        check(0 < a.timestep_fraction <= 1, "algorithm.timestep_fraction", a.timestep_fraction, "must be in (0, 1]")
        check(a.adv_clip_max > 0, "algorithm.adv_clip_max", a.adv_clip_max, "must be > 0")
        ema = a.get("ema_decay")
        check(ema is None or 0 <= ema < 1, "algorithm.ema_decay", ema,
              "must be in [0, 1) (public: nft 0.9, awm 0.99), or null for no evaluation EMA")
        check(a.get("num_inner_epochs", 1) >= 1, "algorithm.num_inner_epochs", a.get("num_inner_epochs"), "must be >= 1")
        check_sharding(world_size(cfg.trainer) or 1, d.samples_per_epoch, a.train_batch_size,
                       a.get("gradient_accumulation_steps", 1))
        check(a.stat_buffer_size >= 1, "algorithm.stat_buffer_size", a.stat_buffer_size, "must be >= 1")
        check(a.stat_min_count <= a.stat_buffer_size, "algorithm.stat_min_count", a.stat_min_count,
              f"must be <= algorithm.stat_buffer_size={a.stat_buffer_size}")
        if "group_size" in a:
            check(isinstance(a.group_size, int) and a.group_size >= 2, "algorithm.group_size", a.group_size,
                  f"must be an integer >= 2: algorithm={a.name} compares each sample with the others of its prompt's group")
            check(d.samples_per_epoch % a.group_size == 0, "data.samples_per_epoch", d.samples_per_epoch,
                  f"must be a multiple of algorithm.group_size={a.group_size} (whole groups of one prompt each)")
        storage = a.get("storage_dtype")
        check(storage is None or storage in DTYPES, "algorithm.storage_dtype", storage,
              f"must be null (the latents as sampled, float32) or one of {sorted(DTYPES)}")
        if "kl_weight" in a:
            check(a.kl_weight >= 0, "algorithm.kl_weight", a.kl_weight, "must be >= 0 (0: no KL term)")

    @classmethod
    def projected_unet_evals(cls, cfg: DictConfig, cfg_factor: int) -> float:
        """The run's UNet work (`rlft.run.work`): every step of every sample sampled, then the trained
        steps, `num_inner_epochs` times, each `evals_per_trained_step`."""
        p, a = cfg.policy, cfg.algorithm
        steps = p.num_steps
        window = steps if p.get("sde_window") is None else p.sde_window[1] - p.sde_window[0]
        per_sample = steps + cls.trained_steps_per_sample(cfg, window) * cls.evals_per_trained_step(cfg) * a.get("num_inner_epochs", 1)
        return cfg.trainer.max_epochs * cfg.data.samples_per_epoch * cfg_factor * per_sample

    @classmethod
    def trained_steps_per_sample(cls, cfg: DictConfig, window: int) -> int:
        return math.ceil(window * cfg.algorithm.get("timestep_fraction", 1.0))

    @classmethod
    def evals_per_trained_step(cls, cfg: DictConfig) -> int:
        """Evaluations per trained step and sample: one forward with gradient (3); a loss that runs
        other networks (a KL reference, an old policy) adds theirs."""
        return 3

    @staticmethod
    def check_flow_model(cfg: DictConfig, title: str) -> None:
        """The algorithms that train on the forward process of rectified flow (NFT, AWM)."""
        family = cfg.model.get("family", "ddim")
        check(family == "flow", "algorithm", cfg.algorithm.name,
              f"{title} trains rectified-flow models (model.family=flow) on their forward process, and "
              f"model={cfg.model.name} is a {family} model: use model=digits_flow (or another flow "
              f"model: sd3, sd35_*, flux_*, flux2_klein_4b, qwen_image, wan*), or algorithm=ppo, grpo, ddpo_sf, rwr or seiko on this model")

    def micro_batching(self) -> tuple:
        return self.train_batch_size, self.gradient_accumulation_steps

    def configure_model(self) -> None:
        super().configure_model()
        if self.ema is not None and uses_fsdp2(self._trainer):  # its copies sharded as the weights now are
            self.ema = evaluation_ema(self.policy.trainable_parameters(), self.ema_decay)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.learned is not None:
            self.learned.model.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    def on_train_epoch_start(self) -> None:
        """reward=ensemble: before the first epoch (and every refresh period) the oracle answers
        `queries` fresh samples of the current policy and the learned reward is refitted."""
        if self.learned is None or not self.learned.due(self.current_epoch):
            return
        n = self.learned.queries
        images, answers = query_fresh_samples(
            self.policy, self.trainer.datamodule.train_prompts, n, self.learned.oracle, self.answers, self.trainer,
            self.seed, "proxy_query", self.current_epoch, f"oracle/epoch={self.current_epoch:05d}",
            self.sample_batch_size, progress=self.showing_progress,
        )
        self.oracle_queries += n
        bad = int((~torch.isfinite(answers)).sum())
        self.health.count("nonfinite_rewards", bad)
        with torch.no_grad():
            features = self.learned.model.features(images)
        self.fit_metrics = {"oracle/reward_mean": float(answers[torch.isfinite(answers)].mean()),
                            **self.learned.fit(self.current_epoch, features, answers, self.trainer.accelerator)}
        stop_if_requested(self.trainer)

    # -- one RL epoch --------------------------------------------------------------------
    def training_step(self, prompts: list[str], batch_idx: int):
        """One RL epoch: sample -> score -> advantages -> update, then its metrics and (every
        `eval_every_n_epochs`) the evaluation. `prompts`: the epoch's global batch. Under DDP each
        rank samples and trains on its contiguous shard; rewards are gathered, so advantages and
        the per-prompt statistics are those of the global batch, the same on every rank."""
        t0 = time.perf_counter()
        self.policy.move_window(self.current_epoch)  # MixGRPO's sliding window (policy.sde_window_shift)
        rank, world = rank_and_world(self.trainer)
        mine = shard(len(prompts), rank, world)
        with self.sampling_weights():
            trajectories, local_parts, reward_s = self.sample_and_score(prompts[mine.start : mine.stop], mine)
        parts = gather(local_parts, world)  # (B, K) in global order: K = 1, or reward=multi's components
        rewards = self.scorer.combine(parts)  # (B,)
        if self.learned is None:
            self.oracle_queries += len(rewards)
        t1 = time.perf_counter()
        valid, problems = self.check_rewards(prompts, parts, rewards)
        train_stats = {}
        if problems:
            log.warning(f"epoch {self.current_epoch}: update skipped")
        elif valid.any():
            advantages = self.advantages(prompts, parts if self.scorer.separate_advantages else rewards, valid)
            train_stats = {"rollout/advantage_absmean": advantages[valid].abs().mean(),
                           **self.update(trajectories, advantages[mine.start : mine.stop].to(self.device))}
            if self.health.too_many(self.epoch_skipped_steps, self.epoch_steps):
                problems.append(f"{self.epoch_skipped_steps}/{self.epoch_steps} optimizer steps had a non-finite gradient")
        self.health.end_epoch(problems)  # raises when unhealthy epochs persist
        stop_if_requested(self.trainer)
        t2 = time.perf_counter()
        self.elapsed_s += t2 - t0

        finite = rewards[valid] if valid.any() else torch.full((1,), float("nan"))
        metrics = {
            "reward/mean": finite.mean(),
            "reward/std": finite.std(unbiased=False),
            "reward/min": finite.min(),
            "reward/max": finite.max(),
            **{f"reward/{name}": mean_of_finite(parts[:, k]) for k, name in enumerate(self.scorer.components)},
            **self.rollout_log_prob(trajectories, world),
            **({"rollout/sde_window_start": float(self.policy.sampler.window[0])}
               if self.policy.sde_window_shift is not None else {}),
            **mean_over_ranks({"time/sample_s": t1 - t0, "time/reward_s": reward_s, "time/train_s": t2 - t1,
                               "time/elapsed_s": self.elapsed_s}, world),
            **train_stats,
            **self.run_metrics(world),
        }
        if self.learned is not None:
            metrics["proxy/disagreement"] = gather(self.learned.disagreement(trajectories.images), world).mean()
            metrics |= self.fit_metrics
            self.fit_metrics = {}
        if self.evaluation is not None and self.eval_every_n_epochs and (
            (self.current_epoch + 1) % self.eval_every_n_epochs == 0 or self.current_epoch == self.trainer.max_epochs - 1
        ):
            metrics |= self.evaluate(world)
        self.log_dict({k: float(v) for k, v in metrics.items()}, on_step=True, on_epoch=False, prog_bar=False)
        if self.trainer.is_global_zero:
            log.info(self.epoch_line(metrics, time.perf_counter() - t0))
        if self.first_reward_mean is None:
            self.first_reward_mean = float(finite.mean())
        self.show_on_progress_bar(metrics)
        self.log_samples(trajectories.images, trajectories.prompts, self.scorer.combine(local_parts), self.current_epoch)

    def check_rewards(self, prompts: list[str], parts: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """-> (valid (B,): the samples that take part in the update, the epoch's problems). A sample
        takes part while one of its rewards is finite: its only reward (the sum under reward=multi's
        combine=sum), or under combine=advantages each component on its own. Non-finite answers are
        counted and named; too many make the epoch unhealthy (a problem: its update is skipped)."""
        separate = self.scorer.separate_advantages
        valid = torch.isfinite(parts).any(1) if separate else torch.isfinite(rewards)
        bad = int((~valid).sum())
        self.health.count("nonfinite_rewards", bad)
        problems = []
        for k, name in enumerate(self.scorer.components):
            if n := int((~torch.isfinite(parts[:, k])).sum()):
                log.warning(f"epoch {self.current_epoch}: the reward component {name} returned {n}/{len(parts)} "
                            f"non-finite values; " + ("those samples get no advantage from it" if separate
                                                     else "their weighted sum is not finite"))
        if bad:
            examples = [prompts[i] for i in (~valid).nonzero()[:3, 0]]
            message = f"the reward returned {bad}/{len(rewards)} non-finite values (prompts {examples})"
            log.warning(f"epoch {self.current_epoch}: {message}; those samples get no advantage")
            if self.health.too_many(bad, len(rewards)):
                problems.append(message)
        return valid, problems

    def evaluate(self, world: int) -> dict[str, float]:
        """eval/... on the held-out prompts, with the evaluation's weights."""
        t_eval = time.perf_counter()
        with self.evaluation_weights():
            metrics, images, eval_prompts, _ = self.evaluation(
                self.policy, self.trainer.datamodule.eval_prompts, self.showing_progress, self.trainer,
                self.answers, f"eval/epoch={self.current_epoch:05d}",
            )
        if self.learned is not None:  # what the policy optimises, on the same held-out samples
            metrics["eval/proxy_reward"] = float(gather(self.learned(images, eval_prompts), world).mean())
            metrics["eval/proxy_gap"] = metrics["eval/proxy_reward"] - metrics["eval/oracle_reward"]
        metrics |= mean_over_ranks({"time/eval_s": time.perf_counter() - t_eval}, world)
        stop_if_requested(self.trainer)
        return metrics

    def sampling_weights(self):
        """The weights that sample the epoch's batch, for the block (DiffusionNFT: its old policy)."""
        return contextlib.nullcontext()

    def evaluation_weights(self):
        """The weights that evaluation samples with, for the block: the EMA's with `ema_decay`."""
        if self.ema is None:
            return contextlib.nullcontext()
        return ema_weights(self.ema, self.policy.trainable_parameters())

    def rollout_log_prob(self, trajectories: Trajectories, world: int) -> dict[str, torch.Tensor]:
        """rollout/log_prob_mean; none for a deterministic sampler (no step has one)."""
        if self.policy.sampler.deterministic:
            return {}
        return {"rollout/log_prob_mean": gather(trajectories.log_probs.mean(1), world).mean()}

    def sample_and_score(self, prompts: list[str], indices: range) -> tuple[Trajectories, torch.Tensor, float]:
        """Sample in chunks of `sample_batch_size`; with `async_reward` each chunk is decoded
        and scored in a worker thread while the next one samples (as ddpo-pytorch does for the
        reward), which hides the VAE and a slow reward (JPEG encoding, a remote service) behind
        denoiser compute. `indices`: the prompts' places in the epoch's global batch, which
        name each sample's noise.
        -> (trajectories, rewards (B, K) possibly non-finite, seconds spent in the reward)"""
        noise = sample_generators(self.seed, "rollout", self.current_epoch, indices, self.device)
        stores = self.offload or self.storage_dtype is not None
        traj, results = sample_and_score(
            self.policy, prompts, self.sample_batch_size, noise,
            lambda part, chunk: self.score(part, indices[chunk.start : chunk.stop]), overlap=self.async_reward,
            progress=self.showing_progress, before_chunk=lambda: stop_if_requested(self.trainer),
            store=(lambda part, chunk: self.store_chunk(part, chunk, len(prompts))) if stores else None,
        )
        return traj, torch.cat([r for r, _ in results]), sum(seconds for _, seconds in results)

    @torch.no_grad()
    def score(self, trajectories: Trajectories, indices: range) -> tuple[torch.Tensor, float]:
        """Rewards (B, K) of one chunk (`indices`: its samples' places in the epoch) and the
        seconds the reward took (`rlft.rewards.scorer`). Each answer is on disk before it is used.
        Non-finite values are returned, not raised: `training_step` counts them and keeps
        them out of the update."""
        t0 = time.perf_counter()
        key = f"rollout/epoch={self.current_epoch:05d}/samples={indices.start}-{indices.stop}"
        rewards = self.scorer.ask(self.answers, key, trajectories.images, trajectories.prompts)
        return rewards, time.perf_counter() - t0

    def advantages(self, prompts: list[str], rewards: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Advantages (B,) in [-adv_clip_max, adv_clip_max]; samples whose reward is not finite
        get 0 (no gradient) and stay out of the statistics. `rewards` (B, K): reward=multi's
        components under combine=advantages, each normalised over its own finite answers (with
        a tracker of its own), then weighted and summed."""
        if rewards.ndim == 2:
            out = torch.zeros(len(rewards))
            for k, name in enumerate(self.scorer.components):
                tracker = self.component_trackers[name] if self.component_trackers else None
                out += self.scorer.weights[k] * self.normalized(prompts, rewards[:, k], torch.isfinite(rewards[:, k]), tracker)
        else:
            out = self.normalized(prompts, rewards, valid, self.stat_tracker)
        return out.clamp(-self.adv_clip_max, self.adv_clip_max)

    def normalized(self, prompts: list[str], rewards: torch.Tensor, valid: torch.Tensor,
                   tracker: PerPromptStatTracker | None) -> torch.Tensor:
        """(B,) rewards -> standardised within their group (GRPO), by their prompt's running
        statistics (DDPO) or by the batch's; 0 where not `valid`."""
        out = torch.zeros_like(rewards)
        if self.group_size > 1:
            out[valid] = group_normalized(rewards, valid, self.group_size, self.std_normalize, self.global_std)[valid]
        elif valid.any():
            kept = [p for p, ok in zip(prompts, valid.tolist()) if ok]
            out[valid] = tracker.update(kept, rewards[valid]) if tracker else batch_normalized(rewards[valid])
        return out

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The algorithm: a scalar loss with gradient, and detached statistics (logged as train/<name>)."""
        raise NotImplementedError

    def accumulation_window(self, batch: int, train_steps: int) -> int:
        """Backward passes per optimizer step: `gradient_accumulation_steps` micro-batches, each
        with one pass per trained timestep."""
        return self.gradient_accumulation_steps * train_steps

    def trained_steps(self, num_steps: int) -> int:
        """Timesteps trained per trajectory and micro-batch: `timestep_fraction` of the sampled steps."""
        return max(1, int(num_steps * self.timestep_fraction))

    def training_passes(self, traj: Trajectories, advantages: torch.Tensor, train_steps: int) -> Iterator[MicroBatch]:
        """The update's passes in order, one micro-batch at one trained timestep per trajectory:
        `num_inner_epochs` over the shuffled batch, each trajectory with its own shuffled order of
        timesteps. A safe point to stop before each micro-batch."""
        batch, num_steps = traj.log_probs.shape
        for _ in range(self.num_inner_epochs):
            rows = torch.randperm(batch, device=self.device)
            # Each trajectory gets its own order of timesteps; the first `train_steps` are trained.
            order = torch.argsort(torch.rand(batch, num_steps, device=self.device), dim=1)[:, :train_steps]
            # (B, T, ...) -> (B, train_steps, ...), where the tensor is (host memory: algorithm.offload)
            pick = lambda x: x[rows.to(x.device)][torch.arange(batch, device=x.device)[:, None], order.to(x.device)]
            latents, next_latents = pick(traj.latents), pick(traj.next_latents)
            old_log_probs, timesteps = pick(traj.log_probs), pick(traj.timesteps)
            means = pick(traj.means) if traj.means is not None else None
            embeds, adv, final = traj.prompt_embeds.map(lambda x: x[rows.to(x.device)]), advantages[rows], traj.final_latents[rows.to(traj.final_latents.device)]
            for start in range(0, batch, self.train_batch_size):
                stop_if_requested(self.attached_trainer)
                mb = slice(start, start + self.train_batch_size)
                for j in range(train_steps):
                    yield MicroBatch(self.fetch(latents[mb, j]), self.fetch(next_latents[mb, j]), timesteps[mb, j],
                                     old_log_probs[mb, j], embeds[mb].map(self.fetch_embedding), adv[mb],
                                     self.fetch(final[mb]), None if means is None else self.fetch(means[mb, j]))

    def fetch(self, latents: torch.Tensor) -> torch.Tensor:
        """Stored latents back on the device, in float32 as sampled (`algorithm.offload`, `storage_dtype`);
        nothing is copied when they are there already."""
        return latents.to(self.device, torch.float32, non_blocking=True)

    def fetch_embedding(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True)

    def store_chunk(self, part: Trajectories, chunk: range, samples: int) -> None:
        """A chunk's trajectories to host memory as soon as it is scored (`offload`), latents in
        `storage_dtype`; the first chunk checks that the epoch's will fit the host's free memory."""
        dtype = DTYPES[self.storage_dtype] if self.storage_dtype else None
        if self.offload and chunk.start == 0:
            need = trajectory_bytes(part, dtype) * math.ceil(samples / len(part))
            check_host_memory(need, "algorithm.offload=true")
        part.store("cpu" if self.offload else self.device, dtype)

    def update(self, traj: Trajectories, advantages: torch.Tensor) -> dict[str, float]:
        """`training_passes` with one backward each; one optimiser step per `accumulation_window`
        backward passes."""
        optimizer = self.current_optimizer()
        batch, num_steps = traj.log_probs.shape
        train_steps = self.trained_steps(num_steps)
        window = self.accumulation_window(batch, train_steps)
        stats, first_update = defaultdict(list), defaultdict(list)
        show = self.showing_progress
        passes = 0
        self.epoch_steps = self.epoch_skipped_steps = 0
        bar = phase_bar(show, "training", self.num_inner_epochs * math.ceil(batch / self.train_batch_size) * train_steps)
        for micro_batch in self.training_passes(traj, advantages, train_steps):
            loss, step_stats = self.loss(micro_batch)
            passes += 1
            with grad_sync(self.attached_trainer, sync=passes % window == 0):  # DDP: one all-reduce per step
                self.backward_pass(loss / window)
            record = {"loss": loss.detach(), **step_stats}
            for k, v in record.items():
                stats[k].append(v)
                if passes <= window:  # weights still those that sampled the batch
                    first_update[k].append(v)
            if passes % window == 0:
                stats["grad_norm"].append(self.optimizer_step(optimizer))
            bar.update()
        bar.close()
        # Means (the maximum for `max_stats`) over this rank's passes, then over the ranks.
        out = {f"train/{k}": torch.stack(values).float().max() if k in self.max_stats else finite_mean(values)
               for k, values in stats.items()}
        for k in self.first_update_stats:
            out[f"train/{k}_first_update"] = finite_mean(first_update[k])
        out = mean_over_ranks(out, self.processes, max_keys=tuple(f"train/{k}" for k in self.max_stats))
        # A non-finite loss gives a non-finite gradient, so its window's step was skipped.
        nonfinite = int((~torch.isfinite(torch.stack(stats["loss"]))).sum())
        self.health.count("nonfinite_losses", sum_over_ranks(nonfinite, self.processes))
        return out

    def optimizer_step(self, optimizer) -> torch.Tensor:
        grad_norm, stepped = clipped_step(optimizer, self.policy.trainable_parameters(), self.max_grad_norm)
        if self.ema is not None:
            self.ema.step(self.policy.trainable_parameters())
        self.optimizer_steps += 1
        self.epoch_steps += 1
        self.epoch_skipped_steps += not stepped
        self.health.count("skipped_steps", not stepped)
        return grad_norm

    # -- checkpoints ---------------------------------------------------------------------
    def ema_state(self) -> dict:
        """The EMA's state with its copies whole (gathered under trainer=fsdp2: every process calls it)."""
        state = self.ema.state_dict()
        state["shadow_params"] = [gathered(p) for p in state["shadow_params"]]
        return state

    def extra_state(self) -> dict:
        return {
            "stat_tracker": self.stat_tracker.state_dict() if self.stat_tracker else None,
            "component_trackers": {n: t.state_dict() for n, t in (self.component_trackers or {}).items()},
            "optimizer_steps": self.optimizer_steps,
            "learned_reward": self.learned.state_dict() if self.learned is not None else None,
            "ema": self.ema_state() if self.ema is not None else None,
        }

    def load_extra_state(self, state: dict) -> None:
        if self.stat_tracker and state.get("stat_tracker"):
            self.stat_tracker.load_state_dict(state["stat_tracker"])
        for name, tracker_state in state.get("component_trackers", {}).items():
            self.component_trackers[name].load_state_dict(tracker_state)
        self.optimizer_steps = state.get("optimizer_steps", 0)
        if self.learned is not None and state.get("learned_reward"):
            self.learned.load_state_dict(state["learned_reward"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
            self.ema.to(self.device)
            self.ema.shadow_params = [sharded_like(p, s) for p, s in zip(self.policy.trainable_parameters(),
                                                                          self.ema.shadow_params, strict=True)]
