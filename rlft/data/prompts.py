"""Prompts for RL: the dataloader yields one RL epoch's prompts, never rollouts."""

import lightning as L
import torch
from torch.utils.data import DataLoader, RandomSampler

from omegaconf.errors import InterpolationResolutionError

from rlft.checks import check, wrong_setting


class EpochSampler(RandomSampler):
    """`num_samples` indices per epoch, each prompt equally often up to one (torch's
    RandomSampler: whole permutations, then part of one), drawn from `seed + epoch` alone.

    Lightning calls `set_epoch` before every epoch, so a resumed run draws exactly the
    prompts an uninterrupted one would, and data loading never touches the global RNG
    (which the checkpoint restores for sampling noise and PPO's shuffles).
    """

    def __init__(self, num_prompts: int, num_samples: int, seed: int = 0):
        super().__init__(range(num_prompts), num_samples=num_samples, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


class PromptDataModule(L.LightningDataModule):
    """`group_size` > 1 (GRPO): an epoch draws samples_per_epoch / group_size prompts and repeats
    each group_size times, consecutively (a group)."""

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        check(node.samples_per_epoch >= 1, "data.samples_per_epoch", node.samples_per_epoch, "must be >= 1")
        try:  # the prompts resolved now: a preset's required prompt files are named before anything loads
            node.train, node.eval
        except InterpolationResolutionError as error:
            raise (wrong_setting(error) or error) from None

    def __init__(self, train: list[str], eval: list[str] | None = None, samples_per_epoch: int = 64, seed: int = 0,
                 group_size: int = 1):
        super().__init__()
        if not train:
            raise ValueError("the training prompt set is empty")
        if group_size < 1 or samples_per_epoch % group_size:
            raise ValueError(f"data.samples_per_epoch={samples_per_epoch} must be a multiple of group_size={group_size}")
        self.save_hyperparameters(logger=False)  # train() logs the whole Hydra config
        self.train_prompts = list(train)
        self.eval_prompts = list(eval or train)
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.group_size = group_size

    def train_dataloader(self) -> DataLoader:
        # One batch per epoch: the whole epoch's prompts, sampled in chunks by the module.
        # Its own generator: without one, every new iterator draws a seed from the global RNG.
        groups = self.samples_per_epoch // self.group_size
        return DataLoader(
            self.train_prompts,
            batch_size=groups,
            sampler=EpochSampler(len(self.train_prompts), groups, self.seed),
            collate_fn=list if self.group_size == 1 else self.repeat_groups,
            generator=torch.Generator(),
        )

    def repeat_groups(self, prompts: list[str]) -> list[str]:
        return [p for p in prompts for _ in range(self.group_size)]
