"""Held-out evaluation shared by the algorithms: `eval/oracle_reward`."""

from typing import Callable

import lightning as L
import torch

from rlft.algorithms.scored_sampling import sample_and_score
from rlft.run.answers import AnswerStore
from rlft.diffusion.noise import sample_generators
from rlft.diffusion.policy import DiffusionPolicy
from rlft.run.distributed import gather, rank_and_world, shard


def training_work(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None") -> int:
    """UNet sample-evaluations of this process's training so far: sampling, updates and
    queries, evaluation excluded (work/unet_evals)."""
    return policy.unet_evaluations - (evaluation.unet_evaluations if evaluation is not None else 0)


def work_state(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None") -> dict[str, int]:
    return {"policy": policy.unet_evaluations, "evaluation": evaluation.unet_evaluations if evaluation else 0}


def load_work_state(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None", state: dict | None) -> None:
    if state:
        policy.unet_evaluations = state["policy"]
        if evaluation is not None:
            evaluation.unet_evaluations = state["evaluation"]


class HeldOutEvaluation:
    """Samples `samples_per_prompt` images per held-out prompt and scores them with a reward
    instance of its own (measurement only: never fed back, never counted as a query).

    Sample i's noise is the same in every evaluation (common random numbers, from `seed`
    and i): evaluations differ only through the policy, and training's random stream is
    untouched. Under DDP each rank evaluates its shard; the mean is over all samples.
    """

    def __init__(self, reward_fn: Callable, samples_per_prompt: int = 4, seed: int = 2024, batch_size: int = 64):
        self.reward_fn = reward_fn
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.batch_size = batch_size
        self.unet_evaluations = 0  # the policy's work spent here, kept out of the run's training work

    @torch.no_grad()
    def __call__(self, policy: DiffusionPolicy, prompts: list[str], progress: bool = False, trainer: L.Trainer | None = None,
                 answers: AnswerStore | None = None, key: str = "eval"):
        """-> (mean reward over all samples, and this rank's images, prompts, rewards).
        `answers`/`key`: where the reward's answers are kept (a resumed run reads them back)."""
        rank, world = rank_and_world(trainer)
        everything = [p for p in prompts for _ in range(self.samples_per_prompt)]
        mine = shard(len(everything), rank, world)
        prompts = everything[mine.start : mine.stop]
        noise = sample_generators(self.seed, "eval", 0, mine, policy.device)
        before = policy.unet_evaluations
        answers = answers or AnswerStore()
        # Each chunk decoded and scored while the next samples: the pass costs its sampling, not more.
        ask = lambda part, chunk: answers.ask(f"{key}/samples={mine.start + chunk.start}-{mine.start + chunk.stop}",
                                              part.images, part.prompts, self.reward_fn)
        trajectories, asked = sample_and_score(policy, prompts, self.batch_size, noise, ask, progress=progress, desc="evaluating")
        self.unet_evaluations += policy.unet_evaluations - before
        images, rewards = trajectories.images, torch.cat(asked)
        every_reward = gather(rewards, world)
        finite = every_reward[torch.isfinite(every_reward)]  # a NaN here is counted by nobody: measure what is there
        return float(finite.mean()) if len(finite) else float("nan"), images, prompts, rewards
