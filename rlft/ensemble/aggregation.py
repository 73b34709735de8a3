"""Aggregations of K reward-head outputs into one reward per image: (B, K) -> (B,).

All are differentiable in the head outputs, since SEIKO backpropagates the aggregated
reward into the policy. `max` is the public SEIKO code's choice (no temperature to tune);
`softmax` interpolates between `max` (T -> 0) and `mean` (T -> inf).
"""

import torch

from rlft.checks import checked_by_building


class Max:
    """Optimistic: the most favourable head."""

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        return head_rewards.max(dim=-1).values


class Mean:
    """Close to greedy: the ensemble's mean prediction."""

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        return head_rewards.mean(dim=-1)


class Min:
    """Pessimistic: the least favourable head."""

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        return head_rewards.min(dim=-1).values


class Softmax:
    """sum_k softmax(r / T)_k * r_k."""

    check_config = staticmethod(checked_by_building)

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(
                f"aggregation.temperature={temperature} is invalid: must be > 0 "
                "(T -> 0 approaches aggregation=max, T -> inf approaches aggregation=mean)"
            )
        self.temperature = temperature

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(head_rewards / self.temperature, dim=-1)
        return (weights * head_rewards).sum(dim=-1)


class UCB:
    """Upper confidence bound: mean + kappa * std across heads (optimism)."""

    sign, counterpart = 1.0, "aggregation=lcb"
    check_config = staticmethod(checked_by_building)

    def __init__(self, kappa: float = 1.0):
        if not kappa >= 0:
            raise ValueError(
                f"aggregation.kappa={kappa} is invalid: must be >= 0 (0 is aggregation=mean; "
                f"the other direction is {self.counterpart}, not a negative kappa)"
            )
        self.kappa = kappa

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        return head_rewards.mean(dim=-1) + self.sign * self.kappa * head_rewards.std(dim=-1, unbiased=False)


class LCB(UCB):
    """Lower confidence bound: mean - kappa * std across heads (pessimism: a reward the
    ensemble is unsure of counts for less, against over-optimising a learned reward)."""

    sign, counterpart = -1.0, "aggregation=ucb"


class Thompson:
    """One head drawn at random for each image (from torch's global generator)."""

    def __call__(self, head_rewards: torch.Tensor) -> torch.Tensor:
        batch, heads = head_rewards.shape
        pick = torch.randint(heads, (batch, 1), device=head_rewards.device)
        return head_rewards.gather(1, pick).squeeze(1)
