"""The optimiser step both algorithms take: clip the gradient norm, step only if finite."""

import torch


def clipped_step(optimizer, parameters: list[torch.nn.Parameter], max_grad_norm: float) -> tuple[torch.Tensor, bool]:
    """-> (gradient norm before clipping, whether the step was taken). A non-finite gradient
    never reaches the weights: the step is skipped and the gradient dropped."""
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)  # over every shard under FSDP2
    if hasattr(grad_norm, "full_tensor"):  # a DTensor (trainer=fsdp2): the norm, the same on every process
        grad_norm = grad_norm.full_tensor()
    stepped = bool(torch.isfinite(grad_norm))
    if stepped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.detach(), stepped
