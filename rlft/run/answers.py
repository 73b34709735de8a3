"""No answered reward query is paid twice: every answer is written to disk as it arrives.

At real size a reward is often a paid service or a person (`reward=http`). A run resumed
after a crash redoes the epoch in progress, and draws exactly the same images (the
checkpoint holds every random state), so each answer is stored under a key naming where it
was asked (phase, epoch or round, the samples' global indices) with a digest of the images
and prompts it answered: a resumed run finds the answer and does not ask again, and an
answer for other images (changed code or settings) is never reused.

Files: `RUN/checkpoints/answers/<key>.pt`, each written to a temporary file and renamed into
place, before the answer is used. They are small (one float per image) and are kept as the
run's record of what the reward said.
"""

import hashlib
import logging
from pathlib import Path
from typing import Callable

import torch

from rlft.rewards import frames
from rlft.run.checkpoints import atomic_save
from rlft.run.preemption import last_checkpoint

log = logging.getLogger(__name__)


def digest(images: torch.Tensor, prompts: list[str]) -> str:
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    h.update("\0".join(prompts).encode())
    return h.hexdigest()


class AnswerStore:
    """`ask(key, images, prompts, reward_fn)` -> rewards (B,) float32 on the CPU, from disk
    when this key was answered for these images, else from `reward_fn` (then stored). Videos
    (B, F, C, H, W) are scored frame by frame and averaged (`rlft.rewards.frames`).
    `directory=None` stores nothing (runs without checkpoints)."""

    def __init__(self, directory: str | Path | None = None):
        self.directory = Path(directory) if directory is not None else None
        self.reused = 0  # answers read back instead of asked (a resumed run)

    def ask(self, key: str, images: torch.Tensor, prompts: list[str], reward_fn: Callable) -> torch.Tensor:
        if self.directory is None:
            return frames.score(reward_fn, images, prompts)
        path = self.directory / f"{key}.pt"
        name = digest(images, prompts)
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            if saved["digest"] == name:
                self.reused += len(saved["rewards"])
                return saved["rewards"]
            log.warning(f"{path} answers other images than this run asks about (the code or settings changed "
                        f"since it was written); asking the reward again")
        rewards = frames.score(reward_fn, images, prompts)
        atomic_save({"digest": name, "rewards": rewards, "prompts": list(prompts)}, path)
        return rewards

    def ask_each(self, key: str, images: torch.Tensor, prompts: list[str], rewards: dict[str, Callable]) -> torch.Tensor:
        """Several rewards about the same images (reward=multi's components, held-out rewards),
        each asked and stored under `key/<name>` -> (B, K) in the order of `rewards`."""
        answers = []
        for name, fn in rewards.items():
            answer = self.ask(f"{key}/{name}", images, prompts, fn)
            if answer.shape != (len(prompts),):
                raise ValueError(f"the reward {name} returned shape {tuple(answer.shape)}; expected ({len(prompts)},)")
            answers.append(answer)
        return torch.stack(answers, dim=1)

    @classmethod
    def beside_checkpoints(cls, trainer) -> "AnswerStore":
        last = last_checkpoint(trainer)
        return cls(last.parent / "answers" if last is not None else None)
