"""The epoch's phases on the progress bar. An rlft epoch is one Lightning batch (sample, score,
update, evaluate), so Lightning's bar alone reads `0/1` for minutes: `PhaseProgressBar` adds a line
under it for the phase in progress (sampling, rewards, training, evaluation), moving within it.

`phase_bar(progress, description, total)` is what the algorithms call: a line of that bar when a
run has one, else a tqdm bar on a terminal (`progress=True`, as `rlft speed` and the tools use it),
else nothing."""

from lightning.pytorch.callbacks import RichProgressBar
from tqdm.auto import tqdm


class PhaseProgressBar(RichProgressBar):
    """Lightning's Rich progress bar with one more line: the phase in progress of the epoch."""

    def phase(self, description: str, total: int) -> "Phase | None":
        if self.is_disabled or self.progress is None:
            return None
        return Phase(self, self.progress.add_task(description, total=total))


class Phase:
    """One phase's line: `update(n)` advances it, `set_description` renames it, `close` removes it."""

    def __init__(self, bar: PhaseProgressBar, task):
        self.bar, self.task = bar, task

    def update(self, n: int = 1) -> None:
        self.bar.progress.advance(self.task, n)
        self.bar.refresh()

    def set_description(self, description: str) -> None:
        self.bar.progress.update(self.task, description=description)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.progress.remove_task(self.task)
        self.bar.refresh()


def phase_bar(progress, description: str, total: int):
    """`progress`: a `PhaseProgressBar` (its line), True (tqdm, shown on a terminal) or False (none).
    -> an object with update(n), set_description(text) and close()."""
    if isinstance(progress, PhaseProgressBar):
        line = progress.phase(description, total)
        if line is not None:
            return line
    return tqdm(total=total, desc=description, leave=False, disable=None if progress else True)


def run_progress_bar(trainer) -> PhaseProgressBar | None:
    """The trainer's `PhaseProgressBar`, if it has one."""
    return next((c for c in getattr(trainer, "callbacks", []) if isinstance(c, PhaseProgressBar)), None)
