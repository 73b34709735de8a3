"""Oracle queries on fresh samples of the current policy: SEIKO's rounds, and the feedback a
learned reward (`reward=ensemble`) is fitted on. One function, so both draw, ask and store
their answers the same way."""

from typing import Callable

import lightning as L
import torch

from rlft.algorithms.scored_sampling import sample_and_score
from rlft.run.answers import AnswerStore
from rlft.diffusion.noise import sample_generators, stream_generator
from rlft.diffusion.policy import DiffusionPolicy
from rlft.run.distributed import gather, rank_and_world, shard


def query_fresh_samples(policy: DiffusionPolicy, prompts: list[str], n: int, oracle: Callable, answers: AnswerStore,
                        trainer: L.Trainer, seed: int, stream: str, index: int, key: str, batch_size: int,
                        progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples `n` images of prompts drawn from `prompts` (stream `<stream>_prompts`, noise
    stream `<stream>`, both at `index`: a round or an epoch) and asks `oracle` about them, a
    global budget: under DDP each rank samples and asks for its shard. Answers are asked chunk
    by chunk under `<key>/samples=a-b`, each on disk before it is used, so a run that dies here
    resumes without paying again for what was answered.
    -> (this rank's images, every rank's answers (n,) in global order, possibly non-finite)"""
    which = stream_generator(seed, f"{stream}_prompts", index)
    drawn = [prompts[i] for i in torch.randint(len(prompts), (n,), generator=which)]
    rank, world = rank_and_world(trainer)
    mine = shard(n, rank, world)
    my_prompts = drawn[mine.start : mine.stop]
    noise = sample_generators(seed, stream, index, mine, policy.device)
    ask = lambda part, chunk: answers.ask(f"{key}/samples={mine.start + chunk.start}-{mine.start + chunk.stop}",
                                          part.images, part.prompts, oracle)
    trajectories, asked = sample_and_score(policy, my_prompts, batch_size, noise, ask, progress=progress,
                                           desc=f"{key}: {n} queries", keep_trajectories=False)
    return trajectories.images, gather(torch.cat(asked), world)
