"""Stable Diffusion at real size, checked on a CPU: checkpoint size and peak memory of one PPO
and one SEIKO epoch through the CLI on random-weight models of SD1.5's architecture
(`rlft.models.random_sd15`: UNet 860M, VAE 84M, text encoder 123M parameters, float32; SEIKO's
ensemble backbone a CLIP ViT-L/14, 428M). 16x16 latents, 2 denoising steps, 2 samples: the
sizes are those of real SD1.5 runs, the compute is small.

Run by `rlft speed speed.size_check=DIR` and by the slow test
(tests/test_size_check.py). Each run is its own process; its peak RSS is the kernel's
(`os.wait4`), and "frozen weights" is the size of the weight files the run loads.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from rlft.models.random_sd15 import save_all

TARGET_PEAK_OVER_WEIGHTS = 1.5
TARGET_CHECKPOINT_MB = 15


def overrides(models: dict[str, Path], algorithm: str) -> list[str]:
    common = [
        "model=sd15", f"model.pretrained={models['pipeline']}", "model.dtype=float32", "policy.num_steps=2",
        "policy.latent_size=16", "model.prompts.train=[cat,dog]", "model.prompts.eval=[fox]",
        "data.samples_per_epoch=2", "trainer.max_epochs=1", "algorithm.evaluation.samples_per_prompt=2",
    ]
    if algorithm == "ppo":  # the default reward (JPEG compressibility): no model of its own
        return [*common, "algorithm=ppo", "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2"]
    return [*common, "algorithm=seiko", f"model.reward_features.clip_path={models['clip']}",
            "algorithm.queries_per_round=[2]", "algorithm.epochs_per_round=1", "algorithm.truncation_steps=2",
            "algorithm.train_batch_size=2", "algorithm.ensemble_epochs=2"]


def weight_bytes(*directories: Path) -> int:
    return sum(p.stat().st_size for d in directories for p in d.rglob("*.safetensors"))


def run_once(args: list[str], run_dir: Path) -> tuple[float, float]:
    """-> (peak RSS in bytes, seconds) of `python -m rlft ARGS` in its own process."""
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir.with_suffix(".log"), "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "rlft", *args, f"hydra.run.dir={run_dir}"],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"python -m rlft {' '.join(args)} failed; see {run_dir.with_suffix('.log')}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start  # ru_maxrss: KiB on Linux


def size_check(workdir: str | Path) -> dict:
    """Builds the models under `workdir/models` (once; about 6 GB of disk) and runs both
    algorithms; -> one row per algorithm, sizes in MB."""
    workdir = Path(workdir)
    models = save_all(workdir / "models")
    rows = {}
    for algorithm in ("ppo", "seiko"):
        run_dir = workdir / f"run_{algorithm}"
        peak, seconds = run_once(overrides(models, algorithm), run_dir)
        frozen = weight_bytes(models["pipeline"], *([models["clip"]] if algorithm == "seiko" else []))
        checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
        rows[algorithm] = {
            "frozen_weights_mb": frozen / 2**20,
            "peak_rss_mb": peak / 2**20,
            "peak_over_weights": peak / frozen,
            "checkpoint_files": [p.name for p in checkpoints],
            "checkpoint_mb": sum(p.stat().st_size for p in checkpoints) / 2**20,
            "seconds": seconds,
        }
    return rows


LARGE_RUN = ["model.dtype=float32", "policy.num_steps=2", "model.prompts.train=[cat,dog]", "model.prompts.eval=[fox]",
             "data.samples_per_epoch=2", "trainer.max_epochs=1", "algorithm.evaluation.samples_per_prompt=1",
             "algorithm=ppo", "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2",
             "policy.lora_rank=32", "policy.lora_alpha=64", "model.max_sequence_length=8"]  # Flow-GRPO's LoRA


def large_size_check(workdir: str | Path) -> dict:
    """One PPO epoch (LoRA r32, the JPEG reward, 2 samples, 2 steps) through the CLI on the
    random-weight models of `rlft.models.random_large`: Wan 2.1 1.3B at full size (5 frames at
    64x64: latents 16x2x8x8), and FLUX.1 at real width with 1 and 2 units of 1 double-stream + 2
    single-stream blocks (64x64 images: latents 16x8x8). About 12 GB of disk."""
    from rlft.models.random_large import save_once, save_random_flux, save_random_wan21_1_3b

    workdir = Path(workdir)
    runs = {
        "wan21_1_3b": (save_once(workdir / "wan21_1_3b", save_random_wan21_1_3b),
                       ["model=wan21_t2v_1_3b", "model.num_frames=5", "model.height=64", "model.width=64"]),
        **{f"flux_{u}_units": (save_once(workdir / f"flux_{u}", lambda p, u=u: save_random_flux(p, u)),
                               ["model=flux_dev", "policy.latent_size=8"]) for u in (1, 2)},
    }
    rows = {}
    for name, (pipeline, args) in runs.items():
        run_dir = workdir / f"run_{name}"
        peak, seconds = run_once([*args, f"model.pretrained={pipeline}", *LARGE_RUN], run_dir)
        transformer = weight_bytes(pipeline / "transformer")
        checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
        rows[name] = {
            "frozen_weights_mb": weight_bytes(pipeline) / 2**20,
            "transformer_mb": transformer / 2**20,
            "peak_rss_mb": peak / 2**20,
            "peak_over_weights": peak / weight_bytes(pipeline),
            "checkpoint_files": [p.name for p in checkpoints],
            "checkpoint_mb": sum(p.stat().st_size for p in checkpoints) / 2**20,
            "lora_mb": weight_bytes(run_dir / "lora") / 2**20,
            "seconds": seconds,
        }
    return rows


def size_table(rows: dict) -> str:
    lines = [f"{'':14} {'frozen weights MB':>18} {'peak RSS MB':>12} {'ratio':>6} {'checkpoint MB':>14} {'files':>6} {'s':>5}"]
    for name, r in rows.items():
        lines.append(f"{name:14} {r['frozen_weights_mb']:18.0f} {r['peak_rss_mb']:12.0f} {r['peak_over_weights']:6.2f} "
                     f"{r['checkpoint_mb']:14.1f} {len(r['checkpoint_files']):6d} {r['seconds']:5.0f}")
    lines.append(f"targets: peak RSS <= {TARGET_PEAK_OVER_WEIGHTS}x the frozen weights, one checkpoint <= "
                 f"{TARGET_CHECKPOINT_MB} MB (SEIKO: plus its feedback features)")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    if len(sys.argv) != 3 or sys.argv[1] not in ("sd15", "large"):
        sys.exit("usage: python -m rlft.tools.size_check sd15|large DIR")
    result = (size_check if sys.argv[1] == "sd15" else large_size_check)(sys.argv[2])
    print(size_table(result))
    print(json.dumps(result, indent=2))
