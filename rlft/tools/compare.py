"""`rlft compare SWEEP_DIR` (or `python -m rlft compare`): the runs of a sweep side by side.

Reads the TensorBoard event files of every job under SWEEP_DIR. A job's configuration is
its directory (named by its overrides); a trailing `seed=N` directory is a seed of that
configuration. Writes, into `--out` (default SWEEP_DIR/compare):
- `summary.md` and `summary.csv`: per configuration and metric, the final and the best
  value (the lowest for the metrics of `LOWER_IS_BETTER`, the highest otherwise), mean ± std
  over seeds (sample std; 0 for one seed), and the seeds found;
- `<metric>.png`: the metric against the epoch or `--x` (e.g. `oracle/queries`, or
  `time/elapsed_s` for wall time), one line per configuration (mean over the seeds that
  reached that point), a band of ± one std.
Partial sweeps work: each configuration counts the seeds and points that exist.
"""

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from rlft.tools.tensorboard import read_scalars
from rlft.tools.visualize import metric_curves

DEFAULT_METRICS = ("reward/mean", "eval/oracle_reward")
# The metrics whose best value is the lowest (docs/reference/metrics.md says the same): losses, KLs,
# errors, clipped and capped fractions, non-finite counts and times. Exact tags, or prefixes
# ending in "/".
LOWER_IS_BETTER = (
    "train/loss", "train/approx_kl", "train/approx_kl_first_update", "train/clipfrac", "train/clipfrac_first_update",
    "train/kl", "train/log_ratio_absmax", "train/log_ratio_capped_frac", "train/positive_loss", "train/negative_loss",
    "train/policy_loss", "ensemble/train_loss", "ensemble/val_mae",
    "health/", "time/",
)


def lower_is_better(metric: str) -> bool:
    return any(metric == m or (m.endswith("/") and metric.startswith(m)) for m in LOWER_IS_BETTER)
SEED_DIR = re.compile(r"seed=(\S+)")
ITEM_SEP = re.compile(r",(?![^\[]*\])")  # commas between overrides, not inside a list value


def short_labels(configs: list[str]) -> tuple[dict[str, str], list[str]]:
    """Drop the overrides every configuration shares: config -> label, and the shared ones."""
    items = {c: ITEM_SEP.split(c) for c in configs}
    shared = [i for i in items[configs[0]] if all(i in v for v in items.values())] if len(configs) > 1 else []
    return {c: ",".join(i for i in v if i not in shared) or c for c, v in items.items()}, shared


class CompareError(Exception):
    pass


def find_runs(sweep_dir: Path) -> dict[str, dict[str, Path]]:
    """configuration -> seed -> run directory, for every directory holding event files."""
    if not sweep_dir.is_dir():
        raise CompareError(f"{sweep_dir} is not a directory")
    runs = defaultdict(dict)
    for run in sorted({p.parent for p in sweep_dir.rglob("events.out.tfevents.*")}):
        seed_match = SEED_DIR.fullmatch(run.name)
        config_dir = run.parent if seed_match else run
        config = str(config_dir.relative_to(sweep_dir)) if config_dir != sweep_dir else sweep_dir.name
        runs[config][seed_match.group(1) if seed_match else "-"] = run
    if not runs:
        raise CompareError(
            f"no TensorBoard event files under {sweep_dir}: a sweep directory holds one folder per job "
            f"(named by its overrides), each with events.out.tfevents.* (python -m rlft -m ... hydra.sweep.dir=DIR)"
        )
    return dict(runs)


def series(scalars: dict, metric: str, x: str | None) -> list[tuple[float, float]]:
    """[(x, value)] in step order. Against another metric (e.g. oracle/queries, constant
    over a SEIKO round's epochs) the last value at each x is kept: the state after it."""
    points = scalars.get(metric, [])
    if x is None:
        return [(float(step), value) for step, value in points]
    x_at = dict(scalars.get(x, []))
    last = {x_at[step]: value for step, value in points if step in x_at}
    return sorted(last.items())


def mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def bootstrap_ci(values, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of `values` (one per seed): the seeds
    resampled with replacement `resamples` times. With 5 seeds it is a rough interval (the
    percentile bootstrap under-covers at small n); say so where it is quoted. For a paired
    comparison pass the per-seed differences."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"bootstrap_ci needs at least 2 values (seeds), got {values.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    means = values[draws].mean(axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_difference(a: dict, b: dict) -> str:
    """`a - b` paired by seed (dicts seed -> value; the seeds both have): the mean difference,
    its bootstrap interval, and `*` where the interval excludes 0. Pairing removes what two
    runs with one seed share (the prompts, the noise, the base model's first samples)."""
    diff = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    if len(diff) < 2:
        return f"- (seeds in common: {len(diff)})"
    lo, hi = bootstrap_ci(diff)
    return f"{np.mean(diff):+.4f} [{lo:+.4f}, {hi:+.4f}]{'*' if lo > 0 or hi < 0 else ' '} seeds={len(diff)}"


def seed_mean_curve(seeds: list[list[tuple[float, float]]]) -> list[tuple[float, float, float]]:
    """[(x, mean, std)] over seeds. Where the seeds share their x values (epochs, queries) the
    mean is taken at each x; where they do not (wall time, `time/elapsed_s`), at each point's
    position in its series, x averaged as well: the k-th evaluation of every seed."""
    groups = defaultdict(list)
    shared_x = len({tuple(x for x, _ in pts[:min(map(len, seeds))]) for pts in seeds}) == 1
    for pts in seeds:
        for k, (px, value) in enumerate(pts):
            groups[px if shared_x else k].append((px, value))
    return [(float(np.mean([px for px, _ in g])), *mean_std([v for _, v in g])) for _, g in sorted(groups.items())]


def compare(sweep_dir: Path, metrics: list[str] | None, x: str | None, out: Path) -> list[dict]:
    runs = find_runs(sweep_dir)
    scalars = {(c, s): read_scalars(path) for c, seeds in runs.items() for s, path in seeds.items()}
    logged = sorted({tag for tags in scalars.values() for tag in tags})
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in logged]
        if not metrics:
            raise CompareError(f"none of the default metrics {list(DEFAULT_METRICS)} was logged; pass --metric, one of {logged}")
    missing = [m for m in [*metrics, *([x] if x else [])] if m not in logged]
    if missing:
        raise CompareError(f"no run under {sweep_dir} logged {missing}; the runs logged {logged}")

    out.mkdir(parents=True, exist_ok=True)
    labels, shared = short_labels(list(runs))
    rows = []
    for metric in metrics:
        lines, bands = {}, {}
        for config, seeds in runs.items():
            per_seed = {s: series(scalars[config, s], metric, x) for s in seeds}
            per_seed = {s: pts for s, pts in per_seed.items() if pts}
            if not per_seed:
                continue
            finals = [pts[-1][1] for pts in per_seed.values()]
            best_of = min if lower_is_better(metric) else max
            bests = [best_of(v for _, v in pts) for pts in per_seed.values()]
            (final, final_std), (best, best_std) = mean_std(finals), mean_std(bests)
            rows.append({
                "config": labels[config], "metric": metric, "seeds": len(per_seed), "seed_names": " ".join(sorted(per_seed)),
                "final_mean": final, "final_std": final_std, "best_mean": best, "best_std": best_std,
                "best_is": best_of.__name__,
                "last_x": max(pts[-1][0] for pts in per_seed.values()),
            })
            curve = seed_mean_curve(list(per_seed.values()))
            lines[labels[config]] = [(px, m) for px, m, _ in curve]
            if len(per_seed) > 1:
                bands[labels[config]] = [(px, m - sd, m + sd) for px, m, sd in curve]
        figure = metric_curves(lines, ylabel=metric, xlabel=x or "epoch", title=f"{sweep_dir.name}: mean ± std over seeds", bands=bands)
        figure.savefig(out / f"{metric.replace('/', '_')}.png", dpi=150, bbox_inches="tight")
    write_tables(rows, out, x, shared)
    return rows


def write_tables(rows: list[dict], out: Path, x: str | None, shared: list[str]) -> None:
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda m, s: "nan" if math.isnan(m) else f"{m:.4g} ± {s:.2g}"
    lines = [
        *([f"All configurations share `{','.join(shared)}`.", ""] if shared else []),
        f"| configuration | metric | seeds | final | best (max, or min where lower is better) | last {x or 'epoch'} |",
        "|---|---|---|---|---|---|",
        *(f"| `{r['config']}` | {r['metric']} | {r['seeds']} | {fmt(r['final_mean'], r['final_std'])} | "
          f"{fmt(r['best_mean'], r['best_std'])} ({r['best_is']}) | {r['last_x']:g} |" for r in rows),
    ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlft compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (hydra.sweep.dir)")
    parser.add_argument("--metric", action="append", help=f"a metric to compare (repeatable; default {list(DEFAULT_METRICS)})")
    parser.add_argument("--x", default=None, help="a metric for the x-axis, e.g. oracle/queries (default: the epoch)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default SWEEP_DIR/compare)")
    args = parser.parse_args(argv)
    try:
        rows = compare(args.sweep_dir, args.metric, args.x, args.out or args.sweep_dir / "compare")
    except CompareError as error:
        sys.exit(f"rlft compare: {error}")
    out = args.out or args.sweep_dir / "compare"
    print((out / "summary.md").read_text())
    print(f"wrote {out}/summary.md, summary.csv and {len({r['metric'] for r in rows})} plot(s)")


if __name__ == "__main__":
    main()
