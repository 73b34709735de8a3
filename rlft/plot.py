"""`python -m rlft.plot RUN_DIR [RUN_DIR ...] --metric reward/mean --out curve.png`:
one metric of one or more runs, read back from their TensorBoard event files."""

import argparse
import sys
from pathlib import Path

from rlft.tensorboard import read_scalars
from rlft.visualize import metric_curves


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlft.plot", description=__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (holding events.out.tfevents.*)")
    parser.add_argument("--metric", default="reward/mean")
    parser.add_argument("--out", default="curve.png")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)

    series = {}
    for run in args.runs:
        try:
            scalars = read_scalars(run)
        except FileNotFoundError as error:
            sys.exit(f"rlft.plot: {error}")
        if args.metric not in scalars:
            sys.exit(f"rlft.plot: {run} has no metric {args.metric!r}; it has {sorted(scalars)}")
        series[run.name] = scalars[args.metric]
    metric_curves(series, ylabel=args.metric, title=args.title).savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
