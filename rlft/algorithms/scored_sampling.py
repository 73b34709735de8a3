"""Sampling in chunks with each chunk's decoding and scoring behind the next chunk's sampling:
what the online algorithms' rollouts, the held-out evaluation and the oracle queries share.

The denoiser is the bulk of the work; the VAE decode and the reward (JPEG encoding, an
aesthetic model, a remote service) of chunk i run in one worker thread while chunk i + 1
samples (ddpo-pytorch overlaps the reward this way; the decode is moved there too). PyTorch
releases the GIL in its kernels, so on a CPU the two share the cores, and on a GPU the
worker's Python and host work hides behind the sampler's kernels.
"""

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.run.progress import phase_bar
from rlft.types import Trajectories

T = TypeVar("T")


def sample_and_score(
    policy: DiffusionPolicy,
    prompts: list[str],
    batch_size: int,
    generators: list[torch.Generator],
    score: Callable[[Trajectories, range], T],
    overlap: bool = True,
    progress=False,
    desc: str = "sampling",
    before_chunk: Callable[[], None] | None = None,
    keep_trajectories: bool = True,
    store: Callable[[Trajectories, range], None] | None = None,
) -> tuple[Trajectories, list[T]]:
    """Sample `prompts` (one generator each) in chunks of `batch_size`; each chunk is decoded
    and then scored, `score(chunk's trajectories, chunk's positions in prompts)`, in the worker
    while the next chunk samples (`overlap=False`: before it). `before_chunk` runs before each
    chunk samples (a graceful stop's check). `progress`: see `rlft.run.progress.phase_bar`; the bar
    counts denoising steps, then, named `rewards`, the chunks whose scores are still awaited.
    `keep_trajectories=False` (the evaluation, oracle queries: images are all they use): each chunk's
    latents are released once it is decoded and scored, so that they never pile up (at FLUX.1's
    size, tens of MB a sample); the returned latents are then (B, 0). `store(part, chunk)` then puts
    what is kept where it is kept (host memory: `algorithm.offload`).
    -> (all trajectories with images, the score of each chunk in order)"""
    parts, futures = [], []

    @torch.no_grad()  # grad mode is per thread: the worker's must be set too
    def decode_and_score(part: Trajectories, chunk: range) -> T:
        part.images = policy.decode(part.final_latents)
        scored = score(part, chunk)
        if not keep_trajectories:
            part.release_latents()
        if store is not None:
            store(part, chunk)
        return scored

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-score") as worker:
        starts = range(0, len(prompts), batch_size)
        bar = phase_bar(progress, desc, len(starts) * policy.num_steps)  # denoising steps
        for start in starts:
            if before_chunk is not None:
                before_chunk()
            chunk = range(start, min(start + batch_size, len(prompts)))
            part = policy.sample(prompts[chunk.start : chunk.stop], generator=generators[chunk.start : chunk.stop], decode=False,
                                 progress=bar)
            parts.append(part)
            futures.append(worker.submit(decode_and_score, part, chunk))
            if not overlap:
                futures[-1].result()
        # The last chunk's decode and reward (and any still queued) run after sampling ends.
        bar.close()
        bar = phase_bar(progress, "rewards" if desc == "sampling" else f"{desc}: rewards", len(futures))
        scores = []
        for future in futures:
            scores.append(future.result())  # re-raises a worker's exception here
            bar.update()
        bar.close()
    return Trajectories.cat(parts), scores
