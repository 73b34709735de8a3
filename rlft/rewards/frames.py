"""Image rewards on videos: a video's reward is the mean of its frames' rewards (as Flow-GRPO
and DanceGRPO score Wan's samples with image rewards)."""

from collections.abc import Callable

import torch


def score(reward_fn: Callable, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """`reward_fn(images, prompts)` for images (B, C, H, W); for videos (B, F, C, H, W), every
    frame scored with its video's prompt, then averaged over the frames: (B,)."""
    if images.ndim == 4:
        return torch.as_tensor(reward_fn(images, prompts)).float().cpu()
    if images.ndim != 5:
        raise ValueError(f"a reward takes images (B, C, H, W) or videos (B, F, C, H, W), not shape {tuple(images.shape)}")
    batch, frames = images.shape[:2]
    per_frame = torch.as_tensor(reward_fn(images.flatten(0, 1), [p for p in prompts for _ in range(frames)]))
    return per_frame.float().cpu().view(batch, frames).mean(dim=1)
