"""The numbers of this experiment's README, from its sweep's event files:
    python experiments/seiko_vs_baselines/analyze.py multirun/seiko_vs_baselines

For each run and each budget of oracle queries where SEIKO evaluates (after each round):
eval/oracle_reward, mean over seeds with a 95% bootstrap interval over seeds; then, for `max`
against each other SEIKO run, the paired per-seed difference (a seed fixes the prompts and
the noise of every sample, so two runs with one seed share their first round's queries) with
its bootstrap interval. An interval that excludes 0 is marked *."""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlft.tools.compare import bootstrap_ci, find_runs, paired_difference, series
from rlft.tools.tensorboard import read_scalars

NAMES = {  # job folder -> the name the README uses
    "algorithm=seiko,aggregation=max": "max",
    "algorithm=seiko,aggregation=mean": "mean",
    "algorithm=seiko,aggregation=softmax": "softmax",
    "algorithm=seiko,aggregation=ucb": "ucb",
    "algorithm=seiko,aggregation=greedy": "greedy",
    "algorithm=seiko,ensemble=ucb": "SEIKO-UCB",
    "algorithm=ppo": "PPO",
}


def at_budgets(sweep: Path) -> dict[str, dict[str, dict[float, float]]]:
    """name -> seed -> {queries: eval/oracle_reward}"""
    out = defaultdict(dict)
    for config, seeds in find_runs(sweep).items():
        for seed, run in seeds.items():
            out[NAMES.get(config, config)][seed] = dict(series(read_scalars(run), "eval/oracle_reward", "oracle/queries"))
    return out


def main(sweep: Path) -> None:
    runs = at_budgets(sweep)
    seiko = [n for n in NAMES.values() if n in runs and n != "PPO"]
    budgets = sorted({q for n in seiko for pts in runs[n].values() for q in pts if q > 0})
    base = [pts[0.0] for n in seiko for pts in runs[n].values() if 0.0 in pts]
    print(f"base model eval/oracle_reward: {np.mean(base):.4f} (over {len(base)} runs: fixed eval noise, so one value)")
    for q in budgets:
        print(f"\n== {q:g} oracle queries: eval/oracle_reward, mean over seeds [95% bootstrap interval], rank by mean")
        rows = []
        for name in [*seiko, "PPO"]:
            values = [pts[q] for pts in runs.get(name, {}).values() if q in pts]  # PPO: every 32 queries
            if len(values) >= 2:
                rows.append((float(np.mean(values)), name, bootstrap_ci(values), len(values)))
        for rank, (mean, name, (lo, hi), n) in enumerate(sorted(rows, reverse=True), 1):
            print(f"{rank}. {name:10s} {mean:.4f} [{lo:.4f}, {hi:.4f}]  seeds={n}")
        print(f"paired differences, max - other (per seed), mean [95% bootstrap interval]:")
        for other in seiko:
            if other == "max":
                continue
            at_q = {name: {s: pts[q] for s, pts in runs[name].items() if q in pts} for name in ("max", other)}
            print(f"  max - {other:10s} {paired_difference(at_q['max'], at_q[other])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
