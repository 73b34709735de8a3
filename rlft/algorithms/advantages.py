"""Rewards -> advantages: per-prompt running statistics (as ddpo-pytorch) or batch ones."""

from collections import defaultdict, deque

import torch

_EPS = 1e-6


def batch_normalized(rewards: torch.Tensor) -> torch.Tensor:
    return (rewards - rewards.mean()) / (rewards.std(unbiased=False) + _EPS)


class PerPromptStatTracker:
    """Normalises each reward by the mean and std of the last `buffer_size` rewards of its
    prompt, once `min_count` of them have been seen; before that, by the batch's."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if min_count > buffer_size:
            raise ValueError(f"min_count={min_count} can never be reached with buffer_size={buffer_size}")
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.buffers: dict[str, deque] = defaultdict(lambda: deque(maxlen=self.buffer_size))

    def update(self, prompts: list[str], rewards: torch.Tensor) -> torch.Tensor:
        rewards = rewards.detach().float().cpu()
        advantages = torch.empty_like(rewards)
        batch_mean, batch_std = rewards.mean(), rewards.std(unbiased=False)
        index = defaultdict(list)
        for i, prompt in enumerate(prompts):
            index[prompt].append(i)
        for prompt, rows in index.items():
            buffer = self.buffers[prompt]
            buffer.extend(rewards[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                history = torch.tensor(list(buffer))
                mean, std = history.mean(), history.std(unbiased=False)
            advantages[rows] = (rewards[rows] - mean) / (std + _EPS)
        return advantages

    def state_dict(self) -> dict:
        return {"buffer_size": self.buffer_size, "min_count": self.min_count, "buffers": {k: list(v) for k, v in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer_size, self.min_count = state["buffer_size"], state["min_count"]
        self.buffers.clear()
        for prompt, values in state["buffers"].items():
            self.buffers[prompt].extend(values)


def group_normalized(rewards: torch.Tensor, valid: torch.Tensor, group_size: int, std_normalize: bool = True,
                     global_std: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantages: the batch is groups of `group_size` consecutive samples of one prompt,
    and each reward is compared with its group's, `(r - mean_group) / (std_group + eps)`
    (population std, eps as Flow-GRPO; `std_normalize=False`: `r - mean_group`, as Dr. GRPO;
    `global_std`: divided by the std of the whole batch instead, flow_grpo's `global_std`).
    Only `valid` (finite) rewards enter a group's statistics; invalid ones get 0. (B,) -> (B,)."""
    if len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    r = torch.where(valid, rewards.detach().float(), 0.0).view(-1, group_size)
    ok = valid.view(-1, group_size).float()
    count = ok.sum(1, keepdim=True).clamp(min=1)
    mean = (r * ok).sum(1, keepdim=True) / count
    centred = (r - mean) * ok
    if std_normalize and global_std:
        centred = centred / (rewards[valid].detach().float().std(unbiased=False) + eps)
    elif std_normalize:
        std = (centred.pow(2).sum(1, keepdim=True) / count).sqrt()
        centred = centred / (std + eps)
    return centred.view(-1)
