"""Checks of a composed config, run before anything is built: a bad value fails at once,
naming the setting, the value and what is valid.

Each class a config names (`_target_`) owns the checks of its settings: its `check_config(cfg,
node, where)` (`rlft.checks`). `validate` knows no option by name: it runs the algorithm's checks
first (the run's choice, which decides what the other settings may be), then those of every
other configured class in the config's order, then the rules that belong to no one class: the
run's own keys, the hardware the trainer asks for, and the processes and launcher."""

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from rlft.models.loading import VAE_DECODES
from rlft.run.sharding import check_fsdp2
from rlft.checks import ConfigError, algorithm_node, check, check_node
from rlft.run.distributed import check_sharding, world_size  # noqa: F401 (part of this module's interface)

__all__ = ["ConfigError", "validate", "world_size", "check_sharding", "check_launcher", "configured_nodes"]


def configured_nodes(node, where: str = ""):
    """(path, node) of every node below `node` that names a `_target_`, in the config's order,
    depth first. Interpolated values (`${reward}`) are left out: each node is checked where it is
    defined, once."""
    if isinstance(node, DictConfig) and "_target_" in node and where:
        yield where, node
    if isinstance(node, DictConfig):
        keys = [k for k in node.keys() if k != "hydra"]
    elif isinstance(node, ListConfig):
        keys = range(len(node))
    else:
        return
    for key in keys:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            yield from configured_nodes(child, f"{where}.{key}" if where else str(key))


def check_launcher(world: int | None, devices) -> None:
    """Lightning starts the other processes of a DDP run by re-running the command line; in a
    local multirun that would re-run the whole sweep in every process."""
    if not world or world == 1 or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    check(hydra_cfg.mode != RunMode.MULTIRUN or "submitit" in launcher, "trainer.devices", devices,
          f"{world} processes in a multirun with {launcher.rsplit('.', 1)[-1]} are not supported: Lightning "
          f"re-runs the command line for each process, which would re-run the sweep. Use hydra/launcher=slurm "
          f"(SLURM starts one task per device), or run the sweep's runs one by one")


def check_hardware(cfg: DictConfig) -> None:
    """What the trainer's device and precision allow (rules across the trainer and the model)."""
    t, dtype = cfg.trainer, cfg.model.get("dtype", "float32")
    on_cpu = t.accelerator == "cpu" or (t.accelerator == "auto" and not torch.cuda.is_available())
    check(not (on_cpu and str(t.get("precision", "32")).startswith("16")), "trainer.precision",
          t.get("precision"), "16-bit needs a GPU (trainer.accelerator=gpu); on a CPU use 32 or bf16-mixed")
    # 16-mixed scales the loss; the algorithms clip and check gradients before Lightning's
    # scaler unscales them, so clipping would act on scaled gradients. bf16 needs no scaler.
    check(str(t.get("precision", "32")) not in ("16-mixed", "16"), "trainer.precision", t.get("precision"),
          "16-mixed (float16 with a loss scaler) is not supported yet: use bf16-mixed (Ampere and later) "
          "or 32 with model.dtype=bfloat16 frozen weights")
    check(not (on_cpu and dtype == "float16"), "model.dtype", dtype,
          "float16 weights need a GPU (trainer.accelerator=gpu); on a CPU use model.dtype=float32")
    strategy = str(t.get("strategy", "auto"))
    # Lightning's FSDP1 and DeepSpeed strategies shard the weights their own way: the algorithms'
    # gradient clipping and many backward passes a training_step are written for DDP and for FSDP2
    # (trainer=fsdp2: ModelParallelStrategy, rlft.run.sharding).
    check("ModelParallelStrategy" in strategy or not any(name in strategy for name in ("fsdp", "deepspeed")),
          "trainer.strategy", strategy, "is not supported by the algorithms; shard the model with trainer=fsdp2 "
          "(FSDP2), or use ddp (docs/scaling.md)")
    check_fsdp2(cfg)


def check_run(cfg: DictConfig) -> None:
    """The run's own keys (config.yaml)."""
    check(cfg.get("compile_break_even", 1) > 0, "compile_break_even", cfg.get("compile_break_even"),
          "must be > 0 (UNet evaluations; rlft speed measures it)")
    check(cfg.get("float32_matmul_precision", "auto") in ("auto", "highest", "high", "medium"), "float32_matmul_precision",
          cfg.get("float32_matmul_precision"), "must be auto (high on a CUDA GPU, else highest), highest, high or medium")
    check(cfg.ckpt_path in (None, "last") or str(cfg.ckpt_path).endswith(".ckpt"), "ckpt_path", cfg.ckpt_path,
          "must be last (resume this run directory if it has a checkpoint), null, or a .ckpt file")
    limit = cfg.get("memory_limit_gib", "auto")
    check(limit in ("auto", None) or (isinstance(limit, (int, float)) and limit > 0), "memory_limit_gib", limit,
          "must be auto (the CUDA device's memory when training on one), a number of GiB > 0, or null (no check)")
    decode = cfg.model.get("vae_decode", "whole")
    check(decode in VAE_DECODES, "model.vae_decode", decode, f"must be one of {list(VAE_DECODES)}")


def validate(cfg: DictConfig) -> None:
    algorithm = algorithm_node(cfg)
    nodes = list(configured_nodes(cfg))  # one walk of the tree
    for where, node in sorted(nodes, key=lambda item: item[1] is not algorithm):  # the algorithm's checks first
        check_node(cfg, node, where)
    check_hardware(cfg)
    check_run(cfg)
    check_launcher(world_size(cfg.trainer), cfg.trainer.get("devices"))
    # Last: for SEIKO it follows from the budget, whose own message says more.
    check(cfg.trainer.max_epochs >= 1, "trainer.max_epochs", cfg.trainer.max_epochs, "must be >= 1")
