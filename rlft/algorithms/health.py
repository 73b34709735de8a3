"""Non-finite values (a reward that returns NaN, a loss or gradient that overflows): each
is counted and logged under `health/...`, the update it would spoil is skipped, and the run
stops with a clear error when they persist."""

import torch

from rlft.checks import checked_by_building


class NonFiniteError(FloatingPointError):
    pass


class NonFiniteGuard:
    """Per epoch, an algorithm reports which fraction of its rewards and of its optimiser
    steps were non-finite. An epoch where either exceeds `max_nonfinite_fraction` is
    unhealthy (its update is skipped by the algorithm); `max_unhealthy_epochs` of them in a
    row stop the run, since the cause (a broken reward service, a diverged model) will not
    go away by itself. Weights never see a non-finite gradient either way."""

    KINDS = ("nonfinite_rewards", "nonfinite_losses", "skipped_steps")

    check_config = staticmethod(checked_by_building)

    def __init__(self, max_nonfinite_fraction: float = 0.5, max_unhealthy_epochs: int = 3):
        if not 0 <= max_nonfinite_fraction < 1:
            raise ValueError(f"health.max_nonfinite_fraction={max_nonfinite_fraction} is invalid: must be in [0, 1)")
        if max_unhealthy_epochs < 1:
            raise ValueError(f"health.max_unhealthy_epochs={max_unhealthy_epochs} is invalid: must be >= 1")
        self.max_nonfinite_fraction = max_nonfinite_fraction
        self.max_unhealthy_epochs = max_unhealthy_epochs
        self.counts = dict.fromkeys(self.KINDS, 0)
        self.unhealthy_in_a_row = 0

    def too_many(self, bad: int, total: int) -> bool:
        return total > 0 and bad / total > self.max_nonfinite_fraction

    def count(self, kind: str, n: int) -> None:
        self.counts[kind] += int(n)

    def end_epoch(self, problems: list[str]) -> None:
        """`problems`: what made this epoch unhealthy, in words (empty if it was healthy)."""
        self.unhealthy_in_a_row = self.unhealthy_in_a_row + 1 if problems else 0
        if self.unhealthy_in_a_row >= self.max_unhealthy_epochs:
            raise NonFiniteError(
                f"{self.unhealthy_in_a_row} epochs in a row had more than {self.max_nonfinite_fraction:.0%} "
                f"non-finite values; the last: {'; '.join(problems)}. The weights are finite and "
                f"checkpoints/last.ckpt holds the last healthy epoch. Limits: health.max_nonfinite_fraction, "
                f"health.max_unhealthy_epochs."
            )

    def metrics(self) -> dict[str, float]:
        return {f"health/{k}": float(v) for k, v in self.counts.items()} | {
            "health/unhealthy_epochs_in_a_row": float(self.unhealthy_in_a_row)
        }

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "unhealthy_in_a_row": self.unhealthy_in_a_row}

    def load_state_dict(self, state: dict) -> None:
        self.counts.update(state["counts"])
        self.unhealthy_in_a_row = state["unhealthy_in_a_row"]


def finite_mean(values: list[torch.Tensor]) -> torch.Tensor:
    """Mean of the finite entries (NaN only if there are none): diagnostics stay plottable."""
    v = torch.stack(values).float()
    return v[torch.isfinite(v)].mean()
