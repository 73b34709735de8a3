"""`rlft memory [overrides]`: the memory plan of the run the same overrides would train
(`rlft.memory.plan`): its peak per process by phase and what makes it up, from the real
architecture on the meta device, and whether it fits `memory.device_gib`. Loads no weights, so it
runs on any machine: `rlft memory +experiment=flow_grpo_pickscore_sd35 trainer.devices=8`."""

import logging
import sys

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from rlft.memory.plan import PLANNED_PROMPT, GiB, describe, fit_advice, plan_run
from rlft.run.config import CONFIG_DIR, check_config_dir
from rlft.run.errors import one_line_errors
from rlft.run.validation import validate


def stand_in_prompts(cfg: DictConfig) -> None:
    """A preset that requires its prompt files (which only the training needs) is planned with
    `PLANNED_PROMPT` in their place."""
    for split in ("train", "eval"):
        try:
            OmegaConf.select(cfg, f"model.prompts.{split}", throw_on_resolution_failure=True)
        except Exception:
            OmegaConf.update(cfg, f"model.prompts.{split}", [PLANNED_PROMPT], force_add=True)
            print(f"model.prompts.{split}: not given; planned with a prompt of about 77 tokens")


def device_bytes(cfg: DictConfig) -> int | None:
    if cfg.memory.device_gib is not None:
        return int(cfg.memory.device_gib * GiB)
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


@hydra.main(config_path=CONFIG_DIR, config_name="memory", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("diffusers").setLevel(logging.ERROR)  # "modules that should be kept in float32": planned as cast
    with one_line_errors(run_directory=False):
        stand_in_prompts(cfg)
        validate(cfg)
        plan = plan_run(cfg)
        limit = device_bytes(cfg)
        print(describe(plan, limit))
        if limit and plan.peak.with_overhead() > limit:
            print(f"to fit, change: {fit_advice(cfg, plan)}")
            sys.exit(1)


check_config_dir()

if __name__ == "__main__":
    main()
