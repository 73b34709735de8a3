"""DDPO-SF (the DDPO paper's score-function baseline, REINFORCE): `loss = -A * logp`, with no
ratio and no clip, and one optimizer step per batch of fresh samples (the gradient of every
micro-batch and trained timestep accumulated), so the gradient is that of the sampling policy."""

import math

import torch

from rlft.algorithms.pipeline import MicroBatch, OnlineRL


def reinforce_loss(log_prob: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """mean(-A * logp) over the micro-batch; (B,) each, `advantages` without gradient."""
    return -(advantages.detach() * log_prob).mean()


class DDPOSF(OnlineRL):
    def __init__(self, **kwargs):
        super().__init__(num_inner_epochs=1, gradient_accumulation_steps=1, **kwargs)

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_prob = self.policy.log_prob(mb.latents, mb.next_latents, mb.timesteps, mb.embeds)
        return reinforce_loss(log_prob, mb.advantages), {}

    def accumulation_window(self, batch: int, train_steps: int) -> int:
        return math.ceil(batch / self.train_batch_size) * train_steps  # the whole batch: one step
