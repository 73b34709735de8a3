"""Host memory for what a run offloads (`algorithm.offload`): how much an epoch's trajectories need,
and how much the machine has free, checked before the first chunk is moved."""

import os

import torch

from rlft.types import Trajectories


def available_host_bytes() -> int:
    """The memory the kernel says new allocations can take without swapping (MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def trajectory_bytes(part: Trajectories, dtype: torch.dtype | None = None) -> int:
    """What `Trajectories.store` keeps of a chunk: latents (in `dtype`), embeddings, images."""
    size = lambda x, cast: 0 if x is None else x.numel() * (torch.empty((), dtype=dtype).element_size()
                                                              if cast and dtype is not None else x.element_size())
    latents = sum(size(x, True) for x in (part.latents, part.next_latents, part.final_latents, part.means))
    return latents + size(part.images, False) + sum(size(x, False) for x in part.prompt_embeds.fields())


def check_host_memory(need: int, setting: str) -> None:
    free = available_host_bytes()
    if need > free:
        raise RuntimeError(f"{setting} keeps this epoch's trajectories in host memory: about {need / 2**30:.1f} GiB "
                           f"a process, and this machine has {free / 2**30:.1f} GiB available. Sample fewer per "
                           f"process (data.samples_per_epoch, trainer.devices), set algorithm.storage_dtype=bfloat16 "
                           f"(half the latents' bytes), or keep them on the device (algorithm.offload=false)")
