"""`rlft` / `python -m rlft`: the Hydra app around `rlft.run.train.train`, and the tools around
runs as subcommands (`rlft compare`, `rlft plot`, `rlft sample`, `rlft benchmark`, `rlft speed`, `rlft memory`, `rlft pretrain`,
`rlft serve`)."""

import importlib
import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from rlft.run.errors import one_line_errors
from rlft.run.config import CONFIG_DIR, check_config_dir

# subcommand -> the module whose main() runs it; argparse tools take argv, Hydra apps read sys.argv.
SUBCOMMANDS = {
    "compare": ("rlft.tools.compare", "argparse"),
    "plot": ("rlft.tools.plot", "argparse"),
    "sample": ("rlft.tools.sample", "hydra"),
    "benchmark": ("rlft.tools.benchmark", "hydra"),
    "speed": ("rlft.tools.speed", "hydra"),
    "memory": ("rlft.tools.memory", "hydra"),
    "pretrain": ("rlft.pretrain.__main__", "hydra"),
    "serve": ("rlft.tools.serve", "hydra"),
}
# Former names, refused with a pointer (a former name would otherwise run as a training override).
RENAMED = {"bench": "`rlft bench` is now `rlft speed` (where the time goes); `rlft benchmark` scores a benchmark"}


class DropLightningTips(logging.Filter):
    """Lightning prints an advertisement ("💡 Tip: ... litlogger") at every Trainer start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("💡 Tip:")


def quiet_console() -> None:
    # Hydra already sends every logger to the console and the run's log file; Lightning's own
    # handlers would print each of its lines a second time.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropLightningTips) for f in tips.filters):
        tips.addFilter(DropLightningTips())
    # The frozen prompt encoder and VAE are in eval mode on purpose (no dropout anywhere).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    from rlft.run.train import train  # imported here so that --help and composition errors are fast

    quiet_console()
    with one_line_errors(run_directory=True):
        metrics = train(cfg)
    return metrics.get("reward/mean", metrics.get("eval/oracle_reward"))  # for Hydra sweepers that optimise


def main() -> None:
    """`rlft SUBCOMMAND ...` runs a tool (see SUBCOMMANDS); anything else is the training app."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
    if command in RENAMED:
        print(f"rlft: {RENAMED[command]}", file=sys.stderr)
        sys.exit(2)
    if command not in SUBCOMMANDS:
        return run()
    module_name, kind = SUBCOMMANDS[command]
    tool = importlib.import_module(module_name)
    if kind == "argparse":
        return tool.main(sys.argv[2:])
    sys.argv = [f"{sys.argv[0]} {command}", *sys.argv[2:]]  # Hydra parses sys.argv itself
    tool.main()


check_config_dir()

if __name__ == "__main__":
    main()
