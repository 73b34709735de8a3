"""`Scorer`: a reward as the training loop and the evaluation ask it, whatever the reward is.

A chunk's answers are (b, K): K = 1 for a plain reward, or one column per component of
reward=multi, each stored on its own in the answer store. `combine` gives the (b,) reward trained
on; `components` names the columns logged on their own (none for a plain reward)."""

from collections.abc import Callable

import torch

from rlft.rewards.multi import MultiReward


class Scorer:
    def __init__(self, reward_fn: Callable):
        self.reward_fn = reward_fn
        self.multi = reward_fn if isinstance(reward_fn, MultiReward) else None
        self.components: list[str] = list(self.multi.names) if self.multi else []
        self.weights = self.multi.weights if self.multi else torch.ones(1)
        # combine=advantages: each component normalised on its own into advantages, then weighted and summed
        self.separate_advantages = self.multi is not None and self.multi.combine == "advantages"

    def ask(self, answers, key: str, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(b, K) answers, each on disk (`answers`: the run's `AnswerStore`) before it is returned."""
        if self.multi is not None:
            return answers.ask_each(key, images, prompts, self.multi.rewards)
        rewards = answers.ask(key, images, prompts, self.reward_fn)
        if rewards.shape != (len(images),):
            raise ValueError(f"the reward returned shape {tuple(rewards.shape)}; expected ({len(images)},)")
        return rewards[:, None]

    def combine(self, parts: torch.Tensor) -> torch.Tensor:
        """(B, K) answers -> (B,) the reward trained on (reward=multi: the components' weighted sum)."""
        return self.multi.combine_parts(parts) if self.multi is not None else parts[:, 0]
