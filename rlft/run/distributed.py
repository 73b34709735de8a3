"""Data parallelism over Lightning's processes (`trainer.strategy=ddp trainer.devices=N`).

Every rank holds the epoch's whole prompt list (the same on all: drawn from seed + epoch),
works on its contiguous shard of it, and gathers what it scored back in global order. With
per-sample noise (`rlft.diffusion.noise`) a sample is the same on whichever rank draws it,
so N devices compute what one device computes with the same global batch. Gradients are
averaged by Lightning's DDP wrapper on `manual_backward`.
"""

from contextlib import nullcontext

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ParallelStrategy
from omegaconf import ListConfig

from rlft.checks import check, set_by_user


def rank_and_world(trainer: L.Trainer | None) -> tuple[int, int]:
    if trainer is None:
        return 0, 1
    return trainer.global_rank, trainer.world_size


def shard(n: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous part of `range(n)`; sizes differ by at most one."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate every rank's `tensor` (first dimensions may differ) in rank order, on the
    CPU. With contiguous shards that is the global order."""
    if world == 1:
        return tensor.detach().cpu()
    parts = [None] * world
    dist.all_gather_object(parts, tensor.detach().cpu())
    return torch.cat(parts)


def sum_over_ranks(count: int, world: int) -> int:
    return int(gather(torch.tensor([count]), world).sum())


def mean_over_ranks(values: dict[str, torch.Tensor], world: int, max_keys: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Per-rank scalars -> their mean over ranks (the max for `max_keys`): one collective."""
    if world == 1 or not values:
        return values
    keys = sorted(values)
    table = gather(torch.stack([torch.as_tensor(values[k], dtype=torch.float32).cpu() for k in keys])[None], world)
    return {k: table[:, i].max() if k in max_keys else table[:, i].mean() for i, k in enumerate(keys)}


def grad_sync(trainer: L.Trainer | None, sync: bool):
    """Around a backward pass: `sync=False` keeps the gradient local (accumulated) instead of
    all-reducing it, so an accumulation window costs one all-reduce, at its last pass."""
    if sync or trainer is None or not isinstance(trainer.strategy, ParallelStrategy):
        return nullcontext()
    return trainer.strategy.block_backward_sync()


def any_rank(trainer: L.Trainer, decision: bool) -> bool:
    """True on every rank when it is true on one (a stop signal that reached one rank)."""
    return trainer.strategy.reduce_boolean_decision(decision, all=False) if trainer.world_size > 1 else decision


def world_size(trainer_cfg) -> int | None:
    """Processes a trainer config asks for, when the config says (devices an int or a list)."""
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        devices = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if not isinstance(devices, int) or devices < 1:
        return None  # "auto", -1: Lightning decides; the modules check again at setup
    return devices * trainer_cfg.get("num_nodes", 1)


def check_sharding(world: int, samples_per_epoch: int, train_batch_size: int | None = None,
                   gradient_accumulation_steps: int = 1) -> None:
    """Under DDP every backward pass is a collective, so every rank must run as many: each
    gets an equal shard of the epoch's samples, cut into whole micro-batches (PPO), grouped
    into whole optimiser steps. When two settings do not fit, the error names the one the
    command line set (the other is the config's), and values of each that work."""
    processes = "" if world == 1 else f" x {world} processes (trainer.devices x trainer.num_nodes)"
    unit = world * (train_batch_size or 1) * (gradient_accumulation_steps if train_batch_size else 1)
    epoch = f"data.samples_per_epoch={samples_per_epoch}"
    if samples_per_epoch % world == 0 and train_batch_size is None:
        return
    if samples_per_epoch % world:
        check(False, "data.samples_per_epoch", samples_per_epoch,
              f"must be a multiple of the {world} processes (trainer.devices x trainer.num_nodes), "
              f"so that every rank gets an equal shard: {nearby_multiples(samples_per_epoch, world)}")
    per_rank = samples_per_epoch // world
    if per_rank % train_batch_size:
        if world == 1:
            share = epoch
        else:
            share = f"the {per_rank} samples each of the {world} processes gets ({epoch} / {world}); it is per device"
        sizes = f"algorithm.train_batch_size={divisors_near(per_rank, train_batch_size)}"
        epochs = nearby_multiples(samples_per_epoch, world * train_batch_size)
        if set_by_user("data.samples_per_epoch") and not set_by_user("algorithm.train_batch_size"):
            check(False, "data.samples_per_epoch", samples_per_epoch,
                  f"must be a multiple of algorithm.train_batch_size={train_batch_size} (not set: this config's "
                  f"value){processes}, so that each process's shard is whole micro-batches: set {epochs}, or {sizes}")
        check(False, "algorithm.train_batch_size", train_batch_size, f"must divide {share}: set {sizes}, or {epochs}")
    micro_batches = per_rank // train_batch_size
    if gradient_accumulation_steps < 1 or micro_batches % gradient_accumulation_steps:
        per = ("data.samples_per_epoch / algorithm.train_batch_size" if world == 1
               else f"on each process: data.samples_per_epoch / {world} / algorithm.train_batch_size")
        steps = f"algorithm.gradient_accumulation_steps={divisors_near(micro_batches, gradient_accumulation_steps)}"
        if gradient_accumulation_steps < 1:
            check(False, "algorithm.gradient_accumulation_steps", gradient_accumulation_steps, f"must be >= 1: set {steps}")
        epochs = nearby_multiples(samples_per_epoch, unit)
        if set_by_user("data.samples_per_epoch") and not set_by_user("algorithm.gradient_accumulation_steps"):
            check(False, "data.samples_per_epoch", samples_per_epoch,
                  f"must be a multiple of algorithm.train_batch_size={train_batch_size} x "
                  f"algorithm.gradient_accumulation_steps={gradient_accumulation_steps} (this config's values)"
                  f"{processes}, so that an epoch is whole optimiser steps: set {epochs}, or {steps}")
        check(False, "algorithm.gradient_accumulation_steps", gradient_accumulation_steps,
              f"must be >= 1 and divide the {micro_batches} micro-batches of an epoch ({per}): set {steps}, or {epochs}")


def divisors_near(n: int, value: int, count: int = 4) -> str:
    """The `count` divisors of `n` nearest `value`, in order ("2 or 4 or 8 or 16")."""
    nearest = sorted(sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(d - value))[:count])
    return " or ".join(map(str, nearest))


def nearby_multiples(value: int, unit: int, key: str = "data.samples_per_epoch") -> str:
    """`key=` the multiples of `unit` on either side of `value` (e.g. "data.samples_per_epoch=8 or 16")."""
    below, above = value // unit * unit, (value // unit + 1) * unit
    return f"{key}={' or '.join(str(v) for v in (below, above) if v > 0)}"
