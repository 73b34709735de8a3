"""Sharded tensors (torch's DTensor, as FSDP2 makes the parameters under `trainer=fsdp2`) to and from
whole ones, for what a checkpoint keeps besides the weights (a second adapter, an EMA's copies)."""

import torch


def gathered(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective), for a checkpoint; any other as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def sharded_like(parameter: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a checkpoint, sharded as `parameter` is (itself when it is not sharded)."""
    if not hasattr(parameter, "device_mesh"):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(parameter.device_mesh.device_type), parameter.device_mesh, parameter.placements)
