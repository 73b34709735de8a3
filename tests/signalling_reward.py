"""A reward for the interruption tests: JPEG compressibility that logs every call and sends
its own process a signal at a chosen call, as a scheduler (SLURM, Ctrl-C) would."""

import hashlib
import os
import signal

from rlft.rewards.jpeg import JpegCompressibility


class SignallingReward(JpegCompressibility):
    """Sends `signum` on the `at_call`-th call (1-based) that scores exactly `batch_size`
    images (any size if null), and appends "<pid> <images>" to `log` on every call and
    "<images> <digest>" per image to `log`.images. With `before`, the signal comes as the call
    arrives, before the reward has seen its images (SIGKILL: the process dies there)."""

    def __init__(self, log: str, at_call: int = 0, batch_size: int | None = None, signum: str = "SIGTERM",
                 before: bool = False, quality: int = 95):
        super().__init__(quality)
        self.log, self.at_call, self.batch_size, self.signum = log, at_call, batch_size, getattr(signal, signum)
        self.before = before
        self.calls = 0

    def __call__(self, images, prompts):
        if self.batch_size is None or len(images) == self.batch_size:
            self.calls += 1
        fire = self.calls == self.at_call and (self.batch_size is None or len(images) == self.batch_size)
        if fire and self.before:
            os.kill(os.getpid(), self.signum)
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {len(images)}\n")
        with open(f"{self.log}.images", "a") as f:
            for image in images:
                f.write(f"{len(images)} {hashlib.sha256(image.float().numpy().tobytes()).hexdigest()}\n")
        if fire and not self.before:
            os.kill(os.getpid(), self.signum)
        return super().__call__(images, prompts)
