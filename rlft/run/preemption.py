"""Stopping a run on a signal without losing anything already paid for.

A run's resume point is its last consistent checkpoint: `checkpoints/last.ckpt`, written at
the end of every epoch (and by SEIKO right after each round's oracle queries). On SIGTERM
(Lightning's handler) or SIGUSR1 (what SLURM sends before a time limit; handled here) the
algorithm stops at its next safe point, between UNet batches, and the epoch in progress is
discarded: resuming redraws it exactly, since the checkpoint holds the RNG states.
"""

import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rlft.run.distributed import any_rank


class Preempted(SIGTERMException):
    """Raised at a safe point after SIGTERM or SIGUSR1."""


class GracefulStop(L.Callback):
    """Lets SIGUSR1 stop the run as Lightning lets SIGTERM. Installed at train start, after
    Lightning's own handlers, which it calls too (Lightning's SLURM requeue among them)."""

    def __init__(self):
        self.requested = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        previous = signal.getsignal(signal.SIGUSR1)

        def handler(signum, frame):
            self.requested = True
            if callable(previous):
                previous(signum, frame)

        # Lightning's teardown puts back every handler that was there before fit, this one too.
        signal.signal(signal.SIGUSR1, handler)


def last_checkpoint(trainer: L.Trainer) -> Path | None:
    """The run's resume point: the checkpoint callback's `last.ckpt` (None without one): its
    save_last file, or its only file when it is named `last` (rlft's default)."""
    callback = trainer.checkpoint_callback
    if callback is None or not callback.dirpath:
        return None
    if not callback.save_last and callback.filename != callback.CHECKPOINT_NAME_LAST:
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


def stop_if_requested(trainer: L.Trainer | None) -> None:
    """Call at safe points: raises `Preempted` once SIGTERM or SIGUSR1 has arrived. Under DDP
    every rank passes the same safe points, and all stop there together when the signal
    reached any of them (one rank stopping alone would leave the others waiting in a
    collective)."""
    if trainer is None:
        return
    requested = trainer.received_sigterm or any(isinstance(c, GracefulStop) and c.requested for c in trainer.callbacks)
    if any_rank(trainer, requested):
        raise Preempted(f"stopped by a signal in epoch {trainer.current_epoch}; that epoch will be redone on resume")
