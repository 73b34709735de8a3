"""Per-sample random streams: the noise of a sample is a function of (seed, stream, epoch,
the sample's index in the epoch's global batch) alone.

So a sample does not change with `sample_batch_size` (a memory setting), with the number of
devices a run is spread over (each rank draws the samples of its own shard), or with what
else drew random numbers before it. diffusers' `randn_tensor` takes the list of generators
and draws each row of a batch from its own.
"""

import numpy as np
import torch

# What the noise is for: each its own stream, so that e.g. evaluation never shares noise with training.
STREAMS = {"rollout": 0, "query": 1, "finetune": 2, "eval": 3, "query_prompts": 4, "proxy_query": 5, "proxy_query_prompts": 6,
           "benchmark": 7}


def stream_generator(seed: int, stream: str, epoch: int, index: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, stream, epoch, index) by numpy's SeedSequence, which
    hashes the tuple: neighbouring indices give unrelated streams."""
    if seed < 0:
        raise ValueError(f"seed={seed} is invalid: must be a non-negative integer")
    state = np.random.SeedSequence([seed, STREAMS[stream], epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator(device).manual_seed(int(state))


def sample_generators(seed: int, stream: str, epoch: int, indices, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample: `indices` are the samples' positions in the epoch's global batch."""
    return [stream_generator(seed, stream, epoch, i, device) for i in indices]
