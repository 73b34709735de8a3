"""`python -m rlft.tools.gpu_check [OUT.json]`: on a CUDA GPU, one GRPO epoch of each real
architecture with random weights in bfloat16 (nothing is downloaded: `rlft.memory.meta.random_weights`)
through the real training code, its peak device memory (`torch.cuda.max_memory_allocated`) beside
the memory plan's (`rlft memory`, traced on the meta device, without its overhead), and images per
second. The cases: SD3.5 Medium in full, FLUX.1 at its real width with 2 double-stream and 4
single-stream blocks (19 and 38 in full), both at 512 px (Flow-GRPO's resolution), LoRA as Flow-GRPO's.
Prints a table; writes the rows as JSON to OUT.json when given. `pytest -m gpu` runs it."""

import json
import sys
import tempfile
import time

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from rlft.memory.meta import architecture, random_weights
from rlft.memory.plan import GiB, plan_run
from rlft.run.config import CONFIG_DIR

COMMON = ["algorithm=grpo", "reward=compressibility", "trainer.accelerator=gpu", "model.dtype=bfloat16",
          "algorithm.epochs=1", "algorithm.group_size=4", "data.samples_per_epoch=16", "algorithm.sample_batch_size=8",
          "algorithm.train_batch_size=4", "policy.latent_size=64", "policy.lora_rank=32", "policy.lora_alpha=64",
          "policy.sde_window=null", "algorithm.eval_every_n_epochs=0", "trainer.logger=false",
          "memory_limit_gib=null"]
CASES = {
    "SD3.5 Medium (full)": (["model=sd35_medium", "model.gradient_checkpointing=false"], {}),
    "FLUX.1-dev, real width, 2 + 4 blocks": (["model=flux_dev"], {"transformer": {"num_layers": 2, "num_single_layers": 4}}),
}


class EpochTimer(L.Callback):
    """The first training epoch's wall time (sampling, rewards, updates), without building the models."""

    seconds: float | None = None

    def on_train_epoch_start(self, trainer, module):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        EpochTimer.seconds = time.perf_counter() - self.start


TIMED = ["trainer.callbacks=[{_target_: rlft.tools.gpu_check.EpochTimer}]", "+trainer.enable_checkpointing=false"]


def run_epoch(overrides: list[str], changes: dict, device: str):
    """One epoch of the run `overrides` compose with random weights on `device`: (the plan's peak
    phase, the epoch's seconds, the composed config)."""
    from rlft.run.train import train

    cfg = composed([*overrides, *TIMED], tempfile.mkdtemp(prefix="rlft-gpu-check-"))
    with architecture(changes):
        planned = plan_run(cfg).peak
        with random_weights(device):
            train(cfg)
    return planned, EpochTimer.seconds, cfg


def composed(overrides: list[str], output_dir: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"hydra.runtime.output_dir={output_dir}"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def check(name: str, overrides: list[str], changes: dict) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    planned, seconds, cfg = run_epoch([*COMMON, *overrides], changes, "cuda")
    measured = torch.cuda.max_memory_allocated()
    return {"model": name, "gpu": torch.cuda.get_device_name(), "planned_peak_gib": planned.total / GiB,
            "planned_phase": planned.name, "measured_peak_gib": measured / GiB, "measured_over_planned": measured / planned.total,
            "images_per_second": cfg.data.samples_per_epoch / seconds, "epoch_seconds": seconds}


def main(argv: list[str]) -> None:
    if not torch.cuda.is_available():
        sys.exit("rlft gpu_check: no CUDA device here (it measures a GPU's peak memory and speed)")
    rows = [check(name, overrides, changes) for name, (overrides, changes) in CASES.items()]
    print(f"{'model':<40} {'GPU':<24} {'planned':>9} {'measured':>9} {'ratio':>6} {'img/s':>7}")
    for r in rows:
        print(f"{r['model']:<40} {r['gpu'][:24]:<24} {r['planned_peak_gib']:8.1f}G {r['measured_peak_gib']:8.1f}G "
              f"{r['measured_over_planned']:6.2f} {r['images_per_second']:7.2f}")
    if argv:
        with open(argv[0], "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
