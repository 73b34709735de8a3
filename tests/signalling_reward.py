"""A reward for the interruption tests: JPEG compressibility that logs every call and sends
its own process a signal at a chosen call, as a scheduler (SLURM, Ctrl-C) would."""

import os
import signal

from rlft.rewards.jpeg import JpegCompressibility


class SignallingReward(JpegCompressibility):
    """Sends `signum` on the `at_call`-th call (1-based) that scores exactly `batch_size`
    images (any size if null), and appends "<pid> <images>" to `log` on every call."""

    def __init__(self, log: str, at_call: int = 0, batch_size: int | None = None, signum: str = "SIGTERM"):
        super().__init__()
        self.log, self.at_call, self.batch_size, self.signum = log, at_call, batch_size, getattr(signal, signum)
        self.calls = 0

    def __call__(self, images, prompts):
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {len(images)}\n")
        if self.batch_size is None or len(images) == self.batch_size:
            self.calls += 1
            if self.calls == self.at_call:
                os.kill(os.getpid(), self.signum)
        return super().__call__(images, prompts)
