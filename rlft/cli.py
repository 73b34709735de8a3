"""`python -m rlft` / `rlft`: the Hydra app around `rlft.train.train`."""

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from rlft.config import CONFIG_DIR, check_config_dir


def quiet_console() -> None:
    # Hydra already sends every logger to the console and the run's log file; Lightning's own
    # handlers would print each of its lines a second time.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # The frozen prompt encoder and VAE are in eval mode on purpose (no dropout anywhere).
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    from rlft.train import train  # imported here so that --help and composition errors are fast

    quiet_console()
    metrics = train(cfg)
    return metrics.get("reward/mean", metrics.get("eval/oracle_reward"))  # for Hydra sweepers that optimise


def main() -> None:
    """`rlft compare SWEEP_DIR ...` compares a sweep's runs; anything else is the Hydra app."""
    if sys.argv[1:2] == ["compare"]:
        from rlft.compare import main as compare

        return compare(sys.argv[2:])
    run()


check_config_dir()

if __name__ == "__main__":
    main()
