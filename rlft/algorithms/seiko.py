"""SEIKO (Uehara, Zhao et al. 2024): feedback-efficient online fine-tuning with an
optimistic bootstrap reward ensemble and KL-regularised reward backpropagation.

A round is `epochs_per_round` Lightning epochs. At a round's first epoch the module
1. samples `queries_per_round[i]` images from the current policy,
2. queries the oracle on them (the only place the oracle is called; every call counts),
3. refits the reward ensemble on all feedback so far (a Lightning Trainer, each head on its
   own bootstrap resample), and freezes the current policy as the KL reference;
then every epoch fine-tunes the policy to maximise the aggregated ensemble reward minus
`kl_weight` * KL(policy || previous round's policy), backpropagating through the last
`truncation_steps` denoising steps.
"""

import logging
import time
from typing import Callable

import torch
from omegaconf import DictConfig

from rlft.run.progress import phase_bar
from rlft.algorithms.base import RLModule
from rlft.algorithms.evaluation import HeldOutEvaluation
from rlft.algorithms.health import NonFiniteError, NonFiniteGuard, finite_mean
from rlft.algorithms.optimizer_step import clipped_step
from rlft.algorithms.queries import query_fresh_samples
from rlft.checks import check
from rlft.diffusion.noise import sample_generators
from rlft.diffusion.policy import DiffusionPolicy
from rlft.diffusion.reference import BaseReference, lora_layers, reference_from_state, snapshot
from rlft.ensemble.fit import fit_reward_model
from rlft.ensemble.reward_ensemble import RewardEnsemble
from rlft.run.distributed import check_sharding, gather, mean_over_ranks, rank_and_world, shard, sum_over_ranks, world_size
from rlft.run.preemption import last_checkpoint, stop_if_requested

log = logging.getLogger(__name__)



def ensemble_state(ensemble: RewardEnsemble) -> tuple[str, ...]:
    """Checkpointed beside the policy's trainable weights: what the reward model fitted (heads,
    reward scale, UCB's precision matrix), frozen between fits; never its frozen backbone."""
    return tuple(f"ensemble.{key}" for key in ensemble.trained_state)


class SEIKO(RLModule):
    summary_metric = "eval/oracle_reward"
    learns_own_reward = True
    config_only_keys = (*RLModule.config_only_keys, "num_heads")  # the ensemble group reads num_heads

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        a, p = cfg.algorithm, cfg.policy
        # Its reward backpropagation runs the ensemble on decoded images; on videos it would need the
        # frame averaging inside the gradient path, which is not written (the online algorithms score frames).
        check("num_frames" not in cfg.model, "algorithm", a.name,
              f"SEIKO backpropagates an image reward model through the sampler, and model={cfg.model.name} is a "
              "video model: use algorithm=ppo, grpo, ddpo_sf, rwr or nft on it (their rewards score each frame)")
        check_sharding(world_size(cfg.trainer) or 1, cfg.data.samples_per_epoch)
        budget = list(a.queries_per_round)
        check(len(budget) > 0 and all(isinstance(n, int) and n > 0 for n in budget),
              "algorithm.queries_per_round", budget, "must be a non-empty list of positive query counts")
        check(a.num_heads >= 1, "algorithm.num_heads", a.num_heads, "must be >= 1 (the public SEIKO code uses 4)")
        check(a.epochs_per_round >= 1, "algorithm.epochs_per_round", a.epochs_per_round, "must be >= 1")
        check(1 <= a.truncation_steps <= p.num_steps, "algorithm.truncation_steps", a.truncation_steps,
              f"must be in [1, policy.num_steps={p.num_steps}]")
        check(a.kl_weight >= 0, "algorithm.kl_weight", a.kl_weight, "must be >= 0")
        check(a.ensemble_epochs >= 1, "algorithm.ensemble_epochs", a.ensemble_epochs, "must be >= 1")
        check(0 < a.ensemble_val_fraction < 1, "algorithm.ensemble_val_fraction", a.ensemble_val_fraction,
              "must be in (0, 1): the share of feedback held out to measure the ensemble's fit")

    @classmethod
    def projected_unet_evals(cls, cfg: DictConfig, cfg_factor: int) -> float:
        """The queries sampled without gradient, then each epoch's fine-tuning through the last
        `truncation_steps` steps with gradient (a checkpointed forward, its recomputation and backward)."""
        a, steps = cfg.algorithm, cfg.policy.num_steps
        queries = sum(a.queries_per_round)
        fine_tuning = cfg.trainer.max_epochs * cfg.data.samples_per_epoch * ((steps - a.truncation_steps) + 4 * a.truncation_steps)
        return cfg_factor * (queries * steps + fine_tuning)

    def __init__(
        self,
        policy: DiffusionPolicy,
        oracle: Callable,
        evaluation: HeldOutEvaluation,
        ensemble: RewardEnsemble,
        aggregation: Callable,
        optimizer: Callable,
        queries_per_round: list[int],
        epochs_per_round: int = 3,
        truncation_steps: int = 3,
        kl_weight: float = 0.01,
        train_batch_size: int = 16,
        sample_batch_size: int = 64,
        max_grad_norm: float = 1.0,
        gradient_checkpointing: bool = True,
        ensemble_epochs: int = 100,
        ensemble_batch_size: int = 64,
        ensemble_val_fraction: float = 0.1,
        log_images_every_n_epochs: int = 3,
        health: NonFiniteGuard | None = None,
        progress: bool = True,
        seed: int = 0,
    ):
        super().__init__(policy, optimizer, evaluation, health, log_images_every_n_epochs, progress, seed)
        self.save_hyperparameters(ignore=["policy", "oracle", "evaluation", "ensemble", "aggregation", "optimizer", "health"], logger=False)
        self.oracle = oracle
        self.ensemble = ensemble
        self.ensemble.heads.requires_grad_(False)  # trainable only inside fit_ensemble
        self.aggregation = aggregation
        self.queries_per_round = list(queries_per_round)
        self.epochs_per_round = epochs_per_round
        self.reference = None  # the previous round's policy (rlft.diffusion.reference: no copy of the network)
        self.rounds_queried = 0  # rounds whose queries are in the feedback (a resumed run never repeats them)
        self.round_problems: list[str] = []  # non-finite oracle rewards of the current round
        self.feedback_features: torch.Tensor | None = None  # (N, feature_dim), all queries so far
        self.feedback_rewards: torch.Tensor | None = None  # (N,)
        self.base_eval = None
        self.round_metrics: dict[str, float] = {}

    # -- the round: query the oracle, refit the ensemble --------------------------------
    def query_oracle(self, round_index: int) -> dict[str, float]:
        """The round's `queries_per_round[round_index]` queries, a global budget: under DDP each
        rank samples and queries its shard, and every rank keeps all the feedback."""
        n = self.queries_per_round[round_index]
        images, rewards = query_fresh_samples(
            self.policy, self.trainer.datamodule.train_prompts, n, self.oracle, self.answers, self.trainer,
            self.hparams.seed, "query", round_index, f"query/round={round_index:03d}", self.hparams.sample_batch_size,
            progress=self.showing_progress,
        )
        world = rank_and_world(self.trainer)[1]
        with torch.no_grad():
            features = gather(self.ensemble.features(images), world)
        self.oracle_queries += n
        valid = torch.isfinite(rewards)
        bad = int((~valid).sum())
        self.health.count("nonfinite_rewards", bad)
        self.round_problems = []
        if bad:
            message = f"the oracle returned {bad}/{n} non-finite rewards in round {round_index}"
            log.warning(f"{message}; those queries are counted but not used")
            if self.health.too_many(bad, n):
                self.round_problems.append(message)
            if self.feedback_rewards is None and not valid.any():
                raise NonFiniteError(f"{message}: the reward ensemble has no feedback to fit")
        features, rewards = features[valid], rewards[valid]
        if self.feedback_features is None:
            self.feedback_features, self.feedback_rewards = features, rewards
        else:
            self.feedback_features = torch.cat([self.feedback_features, features])
            self.feedback_rewards = torch.cat([self.feedback_rewards, rewards])
        return {"oracle/reward_mean": float(rewards.mean()), **self.fit_ensemble()}

    def fit_ensemble(self) -> dict[str, float]:
        """Refit the heads on all feedback so far (rlft.ensemble.fit)."""
        metrics = fit_reward_model(self.ensemble, self.feedback_features, self.feedback_rewards,
                                   self.hparams.ensemble_epochs, self.hparams.ensemble_batch_size,
                                   self.hparams.ensemble_val_fraction, self.trainer.accelerator)
        self.ensemble.trainer = self.trainer  # hand the submodule back to the outer fit
        if self.trainer.world_size > 1:
            # Every rank fitted on the same feedback from the same random state; rank 0's fit
            # is made everyone's, so that the ranks cannot drift apart whatever happens.
            heads = {k: v.cpu() for k, v in self.ensemble.state_dict().items() if not k.startswith("backbone.")}
            self.ensemble.load_state_dict(self.trainer.strategy.broadcast(heads), strict=False)
            metrics = self.trainer.strategy.broadcast(metrics)
        return metrics

    def on_train_epoch_start(self) -> None:
        if self.current_epoch % self.epochs_per_round:
            return
        round_index = self.current_epoch // self.epochs_per_round
        if self.rounds_queried > round_index:
            return  # resumed after this round's queries: they are in the checkpoint
        t0 = time.perf_counter()
        self.round_metrics = self.query_oracle(round_index)
        self.round_metrics["oracle/round"] = float(round_index)
        self.freeze_reference(round_index)
        self.rounds_queried = round_index + 1
        self.elapsed_s += time.perf_counter() - t0
        self.save_round_checkpoint()
        stop_if_requested(self.trainer)

    def freeze_reference(self, round_index: int) -> None:
        """The KL reference of this round: the policy as it is now. Before any fine-tuning
        that is the base (LoRA disabled); later a snapshot in a second adapter."""
        if round_index == 0 and lora_layers(self.policy.denoiser):
            self.reference = BaseReference()
        elif hasattr(self.reference, "copy_policy"):
            self.reference.copy_policy()
        else:
            self.reference = snapshot(self.policy)

    def save_round_checkpoint(self) -> None:
        """Oracle queries are what SEIKO pays for: checkpoint them as soon as they are in, as
        `last.ckpt`, so that `ckpt_path=last` resumes from here and never asks again."""
        path = last_checkpoint(self.trainer)
        if path is not None:
            self.trainer.save_checkpoint(path)

    # -- fine-tuning through the sampling chain ----------------------------------------
    def training_step(self, prompts: list[str], batch_idx: int):
        """`prompts`: the epoch's global batch; under DDP each step's batch is split over the
        ranks and Lightning's DDP wrapper averages the gradients, so a step on N devices is
        the step one device takes with N times the batch."""
        t0 = time.perf_counter()
        optimizer = self.optimizers()
        stats = {"reward_model": [], "kl": [], "loss": [], "grad_norm": [], "disagreement": []}
        size = self.hparams.train_batch_size
        show = self.showing_progress
        rank, world = rank_and_world(self.trainer)
        steps = skipped = 0
        # A step's global batch is `world` x train_batch_size prompts, each rank its part.
        starts = range(0, len(prompts), size * world)
        bar = phase_bar(show, "fine-tuning", len(starts))
        for start in starts:
            stop_if_requested(self.trainer)
            step_prompts = range(start, min(start + size * world, len(prompts)))
            part = shard(len(step_prompts), rank, world)
            batch = step_prompts[part.start : part.stop]
            images, kl = self.policy.sample_with_grad(
                prompts[batch.start : batch.stop], self.hparams.truncation_steps, self.reference,
                checkpoint=self.hparams.gradient_checkpointing,
                generator=sample_generators(self.hparams.seed, "finetune", self.current_epoch, batch, self.device),
            )
            # Aggregated in units of the feedback's std: kl_weight and the aggregation's
            # temperature mean the same whatever the reward's scale (JPEG kB or aesthetic score).
            features = self.ensemble.features(images)
            head_z = self.ensemble.objective_heads(features)  # (B, K)
            objective = self.aggregation(head_z)
            loss = -objective.mean() + self.hparams.kl_weight * kl.mean()
            reward_model = self.ensemble.to_reward_units(objective)
            self.manual_backward(loss)
            grad_norm, stepped = clipped_step(optimizer, self.policy.trainable_parameters(), self.hparams.max_grad_norm)
            steps, skipped = steps + 1, skipped + (not stepped)
            self.health.count("skipped_steps", not stepped)
            for k, v in (("reward_model", reward_model.mean()), ("kl", kl.mean()), ("loss", loss),
                         ("grad_norm", grad_norm), ("disagreement", self.ensemble.uncertainty(features.detach()).mean())):
                stats[k].append(v.detach())
            bar.update()
        bar.close()
        nonfinite = int((~torch.isfinite(torch.stack(stats["loss"]))).sum())
        self.health.count("nonfinite_losses", sum_over_ranks(nonfinite, world))
        problems = list(self.round_problems)
        if self.health.too_many(skipped, steps):
            problems.append(f"{skipped}/{steps} optimizer steps had a non-finite gradient")
        self.health.end_epoch(problems)  # raises when unhealthy epochs persist
        t1 = time.perf_counter()
        self.elapsed_s += t1 - t0
        eval_metrics = self.evaluate(self.current_epoch + 1)
        eval_reward = eval_metrics["eval/oracle_reward"]
        stop_if_requested(self.trainer)
        per_rank = {f"train/{k}": finite_mean(v) for k, v in stats.items() if k != "disagreement"}
        per_rank |= {"ensemble/disagreement": finite_mean(stats["disagreement"]),
                     "time/train_s": t1 - t0, "time/eval_s": time.perf_counter() - t1, "time/elapsed_s": self.elapsed_s}
        metrics = {
            **{k: float(v) for k, v in mean_over_ranks(per_rank, world).items()},
            **self.run_metrics(world),
            **eval_metrics,
            **self.round_metrics,
        }
        self.round_metrics = {}
        # Step = epoch + 1: step 0 holds the evaluation of the base model, before any query.
        if self.logger:
            self.logger.log_metrics(metrics, step=self.current_epoch + 1)
        if self.trainer.is_global_zero:
            log.info(self.epoch_line(metrics, time.perf_counter() - t0))
        self.show_on_progress_bar(metrics)
        self.log("eval/oracle_reward", eval_reward, prog_bar=True, logger=False)
        self.log("work/unet_evals", metrics["work/unet_evals"], logger=False)  # for train()'s closing summary
        if self.first_reward_mean is None:
            self.first_reward_mean = self.base_eval
        self.log_samples(self.last_eval_images, self.last_eval_prompts, self.last_eval_rewards, self.current_epoch + 1)

    # -- evaluation on held-out prompts ------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """`step`: 0 for the base model, epoch + 1 after an epoch (the logged step). -> eval/... metrics."""
        show = self.showing_progress
        metrics, self.last_eval_images, self.last_eval_prompts, self.last_eval_rewards = self.evaluation(
            self.policy, self.trainer.datamodule.eval_prompts, progress=show, trainer=self.trainer,
            answers=self.answers, key=f"eval/step={step:05d}",
        )
        return metrics

    def on_train_start(self) -> None:
        if self.current_epoch == 0 and self.base_eval is None:
            metrics = self.evaluate(0)
            self.base_eval = metrics["eval/oracle_reward"]
            if self.logger:
                self.logger.log_metrics({**metrics, "oracle/queries": 0.0}, step=0)

    # -- checkpoints ---------------------------------------------------------------------
    # Written at the end of every epoch and right after each round's queries: with the weights
    # (policy and ensemble heads) and optimizer state, a resumed run continues exactly as an
    # uninterrupted one, without a repeated query.
    def trained_state(self) -> tuple[str, ...]:
        return ensemble_state(self.ensemble)

    def extra_state(self) -> dict:
        return {
            "rounds_queried": self.rounds_queried,
            "round_metrics": self.round_metrics,
            "round_problems": self.round_problems,
            "base_eval": self.base_eval,
            "feedback_features": self.feedback_features,
            "feedback_rewards": self.feedback_rewards,
            "reference": self.reference.state_dict() if self.reference is not None else None,
        }

    def load_extra_state(self, state: dict) -> None:
        self.rounds_queried = state.get("rounds_queried", 0)
        self.round_metrics = state.get("round_metrics", {})
        self.round_problems = state.get("round_problems", [])
        self.base_eval = state.get("base_eval")
        self.first_reward_mean = self.base_eval
        self.feedback_features = state.get("feedback_features")
        self.feedback_rewards = state.get("feedback_rewards")
        self.reference = reference_from_state(self.policy, state.get("reference"))
