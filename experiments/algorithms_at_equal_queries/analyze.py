"""The numbers of this experiment's README, from a sweep's event files:
    python experiments/algorithms_at_equal_queries/analyze.py multirun/algorithms_at_equal_queries

Per algorithm (mean ± sample std over seeds): eval/oracle_reward at each evaluated budget of
oracle queries, its gain over the base model, the training wall time (time/elapsed_s) at the
end, and how many queries each needed to reach the final mean of the others (linear
interpolation on the seed-mean curve; "-" where a curve never gets there)."""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlft.compare import find_runs, series
from rlft.tensorboard import read_scalars


def curves(sweep: Path) -> dict[str, dict[str, list[tuple[float, float]]]]:
    out = defaultdict(dict)
    for config, seeds in find_runs(sweep).items():
        for seed, run in seeds.items():
            scalars = read_scalars(run)
            out[config.removeprefix("algorithm=")][seed] = {
                "queries": series(scalars, "eval/oracle_reward", "oracle/queries"),
                "elapsed": scalars["time/elapsed_s"][-1][1],
            }
    return out


def first_reaching(curve: list[tuple[float, float]], level: float, start: tuple[float, float]) -> float | None:
    points = [start, *curve]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y1 >= level:
            return x0 + (x1 - x0) * (level - y0) / (y1 - y0) if y1 != y0 else x1
    return None


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
        print(f"{name:8s} seeds={len(seeds)} gain@{last:g}={gains.mean():+.4f}±{gains.std(ddof=1):.4f} "
              f"elapsed={np.mean(elapsed):.0f}±{np.std(elapsed, ddof=1):.0f}s  {row}")
    print("queries to reach the final mean of (columns):")
    names = sorted(finals)
    print(" " * 9 + "".join(f"{n:>9s}" for n in names))
    for name in names:
        cells = []
        for other in names:
            q = first_reaching(mean_curve[name], finals[other], (0.0, base))
            cells.append(f"{q:9.0f}" if q is not None else f"{'-':>9s}")
        print(f"{name:9s}" + "".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
