"""An exponential moving average of the trained weights, which evaluation samples with
(`algorithm.ema_decay`; DiffusionNFT's and AWM's public `train.ema`): diffusers' `EMAModel` on
the schedule of their `EMAModuleWrapper`, the k-th update (k = 1, 2, ...) moving it by
1 - min((1 + k) / (10 + k), decay) towards the weights."""

import contextlib

import torch
from diffusers.training_utils import EMAModel


def evaluation_ema(parameters: list[torch.nn.Parameter], decay: float) -> EMAModel:
    """(diffusers' `EMAModel` counts k from 0 unless update_after_step = -1.)"""
    if not 0 <= decay < 1:
        raise ValueError(f"algorithm.ema_decay={decay} is invalid: must be in [0, 1), or null for no EMA")
    return EMAModel(parameters, decay=decay, update_after_step=-1)


@contextlib.contextmanager
def ema_weights(ema: EMAModel, parameters: list[torch.nn.Parameter]):
    """The EMA's weights in the parameters for the block, the trained ones back after it."""
    ema.store(parameters)
    ema.copy_to(parameters)
    try:
        yield
    finally:
        ema.restore(parameters)
