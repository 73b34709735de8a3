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

import numpy as np

from rlft.tools.compare import bootstrap_ci, find_runs, paired_difference, series
from rlft.tools.tensorboard import read_scalars
from rlft.tools.visualize import metric_curves

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


def plot(runs: dict, names: list[str], out: Path) -> None:
    """Gold (solid) and proxy (dashed) per run, one colour a run, means over seeds: where the
    dashed line climbs above the solid one, the policy is over-optimising the learned reward."""
    lines, styles = {}, {}
    for i, name in enumerate(names):
        for metric, linestyle in (("gold", "-"), ("proxy", "--")):
            at = defaultdict(list)
            for seed in runs[name].values():
                for step, value in seed[metric].items():
                    at[step + 1].append(value)  # the step is the epoch's index: step + 1 epochs done
            if at:
                lines[f"{name} {metric}"] = [(x, float(np.mean(v))) for x, v in sorted(at.items())]
                styles[f"{name} {metric}"] = {"linestyle": linestyle, "color": f"C{i}"}
    figure = metric_curves(lines, ylabel="reward on held-out prompts (kB, higher = smaller JPEG)", xlabel="epochs done",
                           title="PPO on a learned reward: gold (eval/oracle_reward, solid), proxy (eval/proxy_reward, dashed)",
                           styles=styles)
    figure.savefig(out, dpi=100, bbox_inches="tight")


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
        plot(runs, names, plot_to)
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
