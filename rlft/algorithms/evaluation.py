"""Held-out evaluation shared by the algorithms: `eval/oracle_reward`."""

from typing import Callable

import torch
from rlft.diffusion.policy import DiffusionPolicy


class HeldOutEvaluation:
    """Samples `samples_per_prompt` images per held-out prompt and scores them with a reward
    instance of its own (measurement only: never fed back, never counted as a query).

    The initial noise comes from a generator reseeded every time (common random numbers):
    evaluations differ only through the policy, and training's random stream is untouched.
    """

    def __init__(self, reward_fn: Callable, samples_per_prompt: int = 4, seed: int = 2024, batch_size: int = 64):
        self.reward_fn = reward_fn
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, policy: DiffusionPolicy, prompts: list[str], progress: bool = False):
        """-> (mean reward, images, prompts, rewards)"""
        prompts = [p for p in prompts for _ in range(self.samples_per_prompt)]
        generator = torch.Generator(policy.uncond_embed.device).manual_seed(self.seed)
        images = policy.sample_batched(prompts, self.batch_size, generator, progress, desc="evaluating").images
        rewards = torch.as_tensor(self.reward_fn(images, prompts)).float().cpu()
        finite = rewards[torch.isfinite(rewards)]  # a NaN here is counted by nobody: measure what is there
        return float(finite.mean()) if len(finite) else float("nan"), images, prompts, rewards
