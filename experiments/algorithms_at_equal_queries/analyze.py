"""The numbers of this experiment's README, from a sweep's event files:
    python experiments/algorithms_at_equal_queries/analyze.py multirun/algorithms_at_equal_queries

Per algorithm (mean ± sample std over seeds): eval/oracle_reward at each evaluated budget of
oracle queries, its gain over the base model, the training wall time (time/elapsed_s) at the
end, and the first evaluated budget at which each reached the final mean of each other
("-" where it never did within the budget)."""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlft.tools.compare import find_runs, series
from rlft.tools.tensorboard import read_scalars


# The GRPO variants' job folders, by their overrides (all of a row's), and the short names printed
# for them; the first row that matches names the folder.
VARIANTS = [(("sde_type=cps", "sde_window="), "grpo_cps_window"), (("sde_type=cps",), "grpo_cps"),
            (("guard=True",), "grpo_guard"), (("sde_window_shift",), "mixgrpo"), (("sde_window=",), "grpo_window")]


def label(config: str) -> str:
    """A job folder's configuration ("algorithm=grpo,policy.sde_type=cps") -> a short name."""
    return next((name for keys, name in VARIANTS if all(k in config for k in keys)), config.removeprefix("algorithm="))


def curves(sweep: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    out = defaultdict(dict)
    for config, seeds in find_runs(sweep).items():
        for seed, run in seeds.items():
            scalars = read_scalars(run)
            out[label(config)][seed] = {
                "queries": series(scalars, "eval/oracle_reward", "oracle/queries"),
                "elapsed": scalars["time/elapsed_s"][-1][1],
            }
    return out


def first_reaching(curve: list[tuple[float, float]], level: float) -> float | None:
    """The first evaluated budget at which the seed-mean curve is at `level` or above. No
    interpolation: SEIKO spends a round's queries at once, and an online algorithm's queries
    between two evaluations are not measured."""
    return next((q for q, v in curve if v >= level), None)


def main(sweep: Path) -> None:
    runs = curves(sweep)
    base = [pts["queries"][0][1] for pts in runs["seiko"].values() if pts["queries"][0][0] == 0]
    base = float(np.mean(base))  # SEIKO's step 0: the base model, the same for every run (fixed eval noise)
    print(f"base model eval/oracle_reward: {base:.4f}")
    mean_curve, finals = {}, {}
    for name, seeds in sorted(runs.items()):
        at = defaultdict(list)
        for pts in seeds.values():
            for q, v in pts["queries"]:
                if q > 0:
                    at[q].append(v)
        mean_curve[name] = [(q, float(np.mean(v))) for q, v in sorted(at.items())]
        last = max(at)
        finals[name] = float(np.mean(at[last]))
        elapsed = [pts["elapsed"] for pts in seeds.values()]
        row = " ".join(f"{q:g}:{np.mean(v):.4f}±{np.std(v, ddof=1):.4f}" for q, v in sorted(at.items()))
        gains = np.array(at[last]) - base
        print(f"{name:10s} seeds={len(seeds)} gain@{last:g}={gains.mean():+.4f}±{gains.std(ddof=1):.4f} "
              f"elapsed={np.mean(elapsed):.0f}±{np.std(elapsed, ddof=1):.0f}s "
              f"gain/100s={100 * gains.mean() / np.mean(elapsed):+.4f}  {row}")
    print("queries to reach the final mean of (columns):")
    names = sorted(finals)
    print(" " * 11 + "".join(f"{n:>11s}" for n in names))
    for name in names:
        cells = []
        for other in names:
            q = first_reaching(mean_curve[name], finals[other])
            cells.append(f"{q:11.0f}" if q is not None else f"{'-':>11s}")
        print(f"{name:11s}" + "".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
