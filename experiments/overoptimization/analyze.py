"""The numbers of this experiment's README, from its sweep's event files:
    python experiments/overoptimization/analyze.py multirun/overoptimization [--plot FILE.png]

Per run (PPO on the learned reward under each aggregation, and PPO on the oracle) and per
evaluation step: the gold reward (eval/oracle_reward), the proxy (eval/proxy_reward, what
PPO optimises) and their gap (eval/proxy_gap = proxy - gold), each the mean over seeds with a
95% bootstrap interval over seeds. Then each aggregation against `mean`, paired by seed (a
seed fixes the prompts, the noise and the 256 queries' base samples of every run): the gold
and the gap at the last step. An interval that excludes 0 is marked *."""

import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rlft.compare import bootstrap_ci, find_runs, paired_difference, series
from rlft.tensorboard import read_scalars

NAMES = {  # job folder -> the name the README uses
    "algorithm=ppo,reward=compressibility": "oracle",
    "aggregation=mean": "mean", "aggregation=max": "max", "aggregation=lcb": "lcb", "aggregation=min": "min",
}
METRICS = {"gold": "eval/oracle_reward", "proxy": "eval/proxy_reward", "gap": "eval/proxy_gap"}


def runs_by_name(sweep: Path) -> dict[str, dict[str, dict[str, dict[float, float]]]]:
    """name -> seed -> metric -> {step: value}"""
    out = defaultdict(dict)
    for config, seeds in find_runs(sweep).items():
        name = next((n for folder, n in NAMES.items() if config.endswith(folder)), config)
        for seed, run in seeds.items():
            scalars = read_scalars(run)
            out[name][seed] = {m: dict(series(scalars, tag, None)) for m, tag in METRICS.items()}
    return out


def cell(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    lo, hi = bootstrap_ci(values)
    return f"{np.mean(values):+.4f} [{lo:+.4f},{hi:+.4f}]"


def plot(runs: dict, names: list[str], steps: list[float], out: Path) -> None:
    """Gold (solid) and proxy (dashed) per run, means over seeds: where the dashed line
    climbs above the solid one, the policy is over-optimising the learned reward."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for name in names:
        color = None
        for metric, style in (("gold", "-"), ("proxy", "--")):
            xs = [s + 1 for s in steps if any(s in seed[metric] for seed in runs[name].values())]
            if not xs:
                continue
            ys = [np.mean([seed[metric][x - 1] for seed in runs[name].values() if x - 1 in seed[metric]]) for x in xs]
            (line,) = ax.plot(xs, ys, style, marker="o", markersize=3, color=color, label=f"{name} {metric}")
            color = line.get_color()
    ax.set_xlabel("epochs done")
    ax.set_ylabel("reward on held-out prompts (kB, higher = smaller JPEG)")
    ax.set_title("PPO on a learned reward: gold (eval/oracle_reward, solid) and proxy (eval/proxy_reward, dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(out, dpi=100, bbox_inches="tight")


def main(sweep: Path, plot_to: Path | None = None) -> None:
    runs = runs_by_name(sweep)
    names = [n for n in NAMES.values() if n in runs]
    steps = sorted({s for n in names for seed in runs[n].values() for s in seed["gold"]})
    for metric in METRICS:
        print(f"\n== {METRICS[metric]}: mean over seeds [95% bootstrap interval], by evaluation step (epochs done)")
        print(f"{'step':>5s} " + "".join(f"{n:>28s}" for n in names))
        for step in steps:
            row = [cell([seed[metric][step] for seed in runs[n].values() if step in seed[metric]]) for n in names]
            print(f"{step + 1:5.0f} " + "".join(f"{c:>28s}" for c in row))
    if plot_to:
        plot(runs, names, steps, plot_to)
    last = steps[-1]
    print(f"\n== paired by seed at the last step ({last + 1:.0f} epochs): other - mean, [95% bootstrap interval]")
    for other in names:
        if other == "mean":
            continue
        for metric in ("gold", "gap"):
            at_last = {name: {s: m[metric][last] for s, m in runs[name].items() if last in m[metric]} for name in (other, "mean")}
            print(f"  {other:7s} {metric:5s} {paired_difference(at_last[other], at_last['mean'])}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[3]) if sys.argv[2:3] == ["--plot"] else None)
