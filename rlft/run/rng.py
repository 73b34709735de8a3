"""The random states a checkpoint carries, so that a resumed run draws what an
uninterrupted one would. Plain tensors and ints: checkpoints load with weights_only=True."""

import random

import numpy as np
import torch
from lightning.fabric.utilities.seed import reset_seed


def get_rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reseed_at_fit_start() -> None:
    """Reseed the global RNGs from `seed` as Lightning's DDP strategy does when it sets up
    its processes, so a run starts training from the same random state on one device as on
    several. Called from the modules' `setup`, before a checkpoint's RNG state is restored."""
    reset_seed()
