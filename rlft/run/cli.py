"""`rlft` / `python -m rlft`: the Hydra app around `rlft.run.train.train`, and the tools around
runs as subcommands (`rlft compare`, `rlft plot`, `rlft sample`, `rlft benchmark`, `rlft bench`, `rlft pretrain`,
`rlft serve`)."""

import importlib
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rlft.checks import wrong_setting
from rlft.run.config import CONFIG_DIR, check_config_dir

# subcommand -> the module whose main() runs it; argparse tools take argv, Hydra apps read sys.argv.
SUBCOMMANDS = {
    "compare": ("rlft.tools.compare", "argparse"),
    "plot": ("rlft.tools.plot", "argparse"),
    "sample": ("rlft.tools.sample", "hydra"),
    "benchmark": ("rlft.tools.benchmark", "hydra"),
    "bench": ("rlft.tools.bench", "hydra"),
    "pretrain": ("rlft.pretrain.__main__", "hydra"),
    "serve": ("rlft.tools.serve", "hydra"),
}


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


def leave_no_empty_run(output_dir: str) -> bool:
    """A run that failed before it trained leaves no directory: removed when it holds only Hydra's
    config and the log (a resumed run's directory has its checkpoints and is kept)."""
    run = Path(output_dir)
    if not run.is_dir() or any(p.name not in (".hydra", "cli.log") for p in run.iterdir()):
        return False
    shutil.rmtree(run)
    if run.parent.is_dir() and not any(run.parent.iterdir()):
        run.parent.rmdir()  # outputs/DATE/ when this was its only run
    return True


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    from rlft.run.train import train  # imported here so that --help and composition errors are fast

    quiet_console()
    try:
        metrics = train(cfg)
    except Exception as error:
        # A wrong setting is said in one line and the run stops (exit 2); HYDRA_FULL_ERROR=1 shows
        # the traceback, and a multirun's failing job is left to Hydra's launcher.
        wrong = wrong_setting(error)
        if wrong is None or os.environ.get("HYDRA_FULL_ERROR") == "1" or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        removed = leave_no_empty_run(HydraConfig.get().runtime.output_dir)
        print(f"rlft: {wrong}" + ("" if removed else f" (run directory: {HydraConfig.get().runtime.output_dir})"),
              file=sys.stderr)
        sys.exit(2)
    return metrics.get("reward/mean", metrics.get("eval/oracle_reward"))  # for Hydra sweepers that optimise


def main() -> None:
    """`rlft SUBCOMMAND ...` runs a tool (see SUBCOMMANDS); anything else is the training app."""
    command = sys.argv[1] if len(sys.argv) > 1 else None
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
