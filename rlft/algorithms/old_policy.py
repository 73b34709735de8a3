"""DiffusionNFT's old (sampling) policy follows the trained one by a soft update after each
epoch, old <- decay * old + (1 - decay) * theta, with a decay that ramps with the optimizer
steps taken: the public code's `return_decay(step, decay_type)` (NVlabs/DiffusionNFT
`scripts/train_nft_sd3.py`). Plain functions, so that configs are checked at composition."""

# The public code's `return_decay(step, decay_type)`: (flat steps, rate per step, maximum).
DECAY_TYPES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


def old_policy_decay(step: int, flat: int, rate: float, maximum: float) -> float:
    """The old policy's decay after `step` optimizer steps: 0 for the first `flat` steps, then
    rising by `rate` a step up to `maximum`."""
    return 0.0 if step < flat else min((step - flat) * rate, maximum)


def decay_schedule(decay_type: int | None, decay: list | None) -> tuple[int, float, float]:
    """(flat, rate, maximum) from the public `decay_type`, or given as `decay`."""
    if (decay_type is None) == (decay is None):
        raise ValueError(f"algorithm.decay_type={decay_type} and algorithm.decay={decay}: give exactly one (decay_type "
                         f"0, 1 or 2 as the public code, or decay=[flat_steps, rate, maximum])")
    if decay is None:
        if decay_type not in DECAY_TYPES:
            raise ValueError(f"algorithm.decay_type={decay_type} is not a public schedule: valid are {sorted(DECAY_TYPES)} "
                             "(or decay_type=null and decay=[flat_steps, rate, maximum])")
        return DECAY_TYPES[decay_type]
    flat, rate, maximum = decay
    if not (isinstance(flat, int) and flat >= 0 and rate >= 0 and 0 <= maximum < 1):
        raise ValueError(f"algorithm.decay={list(decay)} is invalid: must be [flat_steps >= 0 (an integer), rate >= 0, "
                         "maximum in [0, 1)] (a decay of 1 would freeze the old policy)")
    return int(flat), float(rate), float(maximum)
