"""`rlft plot RUN_DIR [RUN_DIR ...] --metric reward/mean [--x oracle/queries] --out curve.png`:
one metric of one or more runs, read back from their TensorBoard event files, against the
epoch or against another metric logged at the same steps (e.g. the oracle queries spent)."""

import argparse
import sys
from pathlib import Path

from rlft.tools.tensorboard import read_scalars
from rlft.tools.visualize import metric_curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rlft plot", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (holding events.out.tfevents.*)")
    parser.add_argument("--metric", default="reward/mean")
    parser.add_argument("--x", default=None, help="a metric for the x-axis (default: the epoch/step)")
    parser.add_argument("--out", default="curve.png")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)

    series = {}
    for run in args.runs:
        try:
            scalars = read_scalars(run)
        except FileNotFoundError as error:
            sys.exit(f"rlft.tools.plot: {error}")
        for name in filter(None, (args.metric, args.x)):
            if name not in scalars:
                sys.exit(f"rlft.tools.plot: {run} has no metric {name!r}; it has {sorted(scalars)}")
        points = scalars[args.metric]
        if args.x:
            x_at = dict(scalars[args.x])
            points = [(x_at[step], value) for step, value in points if step in x_at]
        series[run.name] = points
    figure = metric_curves(series, ylabel=args.metric, xlabel=args.x or "epoch", title=args.title)
    figure.savefig(args.out, dpi=150, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
