"""Prompts for RL: the dataloader yields one RL epoch's prompts, never rollouts."""

import lightning as L
from torch.utils.data import DataLoader, Dataset


class PromptCycle(Dataset):
    """`length` prompts cycling through `prompts`, so a shuffled epoch holds each prompt
    equally often (per-prompt statistics then see every prompt every epoch)."""

    def __init__(self, prompts: list[str], length: int):
        if not prompts:
            raise ValueError("the prompt set is empty")
        self.prompts = list(prompts)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> str:
        return self.prompts[index % len(self.prompts)]


class PromptDataModule(L.LightningDataModule):
    def __init__(self, train: list[str], eval: list[str] | None = None, samples_per_epoch: int = 64):
        super().__init__()
        self.save_hyperparameters(logger=False)  # train() logs the whole Hydra config
        self.train_prompts = list(train)
        self.eval_prompts = list(eval or train)
        self.samples_per_epoch = samples_per_epoch

    def train_dataloader(self) -> DataLoader:
        # One batch per epoch: the whole epoch's prompts, sampled in chunks by the module.
        return DataLoader(
            PromptCycle(self.train_prompts, self.samples_per_epoch),
            batch_size=self.samples_per_epoch,
            shuffle=True,
            collate_fn=list,
        )
