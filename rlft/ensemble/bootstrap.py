"""Bootstrap resampling as per-example counts, one column per ensemble head."""

import torch


def bootstrap_counts(num_examples: int, num_heads: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(num_examples, num_heads) counts: column k is how often each example appears in head
    k's bootstrap resample (n draws with replacement, so every column sums to n).

    Training head k with its examples' squared errors weighted by these counts is exactly
    training it on a resampled data set, without materialising K copies of the data.
    """
    draws = torch.randint(num_examples, (num_heads, num_examples), generator=generator)
    counts = torch.zeros(num_heads, num_examples)
    counts.scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float32))
    return counts.T
