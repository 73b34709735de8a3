"""`python -m rlft.bench [model=...] [overrides]`: where the time goes, measured in one run.

RL fine-tuning of a diffusion model is bound by UNet compute. Each figure below is the
algorithm's own code against a bare loop of the same UNet calls on the same batch shapes,
timed in the same process one after the other, so the ratio (1.00 = no overhead) survives a
shared, noisy machine better than either time alone:

- sampling: `DiffusionPolicy.sample` (CFG, DDIM step, log-prob, decoding) vs `num_steps`
  bare UNet forwards on the CFG-doubled batch, in inference mode;
- PPO training: `policy.log_prob` + `ppo_clip_loss` + backward + the clipped optimizer step
  for every trained timestep, vs bare UNet forward + backward into the LoRA weights;
- SEIKO fine-tuning: `policy.sample_with_grad` through the truncated chain with its KL to a
  reference UNet, vs bare forwards with the same graph (no checkpointing, no reference);
- peak memory (RSS; CUDA max_memory_allocated on a GPU).
Prints a table and writes bench.json in the run directory.
"""

import copy
import json
import resource
import statistics
import time
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlft.algorithms.optimizer_step import clipped_step
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.config import CONFIG_DIR, check_config_dir


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bare_unet(policy, latents, timestep, embeds):
    """The UNet call `predict_noise` makes, nothing around it (CFG batch doubled)."""
    unet = policy.unet
    if policy.guidance_scale == 1.0:
        return unet(latents, timestep, embeds).sample
    timestep = torch.as_tensor(timestep, device=latents.device)
    if timestep.ndim:
        timestep = torch.cat([timestep, timestep])
    return unet(torch.cat([latents, latents]), timestep, torch.cat([policy.uncond_embed.expand_as(embeds), embeds])).sample


def bench(cfg: DictConfig) -> dict:
    L.seed_everything(cfg.seed)
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    policy = instantiate(cfg.policy, **instantiate(cfg.model.load)).to(device)
    prompts = [cfg.model.prompts.train[i % len(cfg.model.prompts.train)] for i in range(cfg.bench.samples)]
    embeds = policy.encode_prompts(prompts)
    timesteps = policy.scheduler.timesteps.to(device)
    x = policy.initial_latents(len(prompts))
    repeats = cfg.bench.repeats
    out = {"device": device, "samples": len(prompts), "num_steps": len(timesteps),
           "trainable_parameters": sum(p.numel() for p in policy.trainable_parameters())}

    # (a) sampling
    def bare_sampling():
        with torch.inference_mode():
            for t in timesteps:
                bare_unet(policy, x, t, embeds)
    out["sample_s"] = timed(lambda: policy.sample(prompts), repeats)
    out["sample_bare_s"] = timed(bare_sampling, repeats)
    out["sample_images_per_s"] = len(prompts) / out["sample_s"]

    # (b) PPO: every trained timestep of one inner epoch, micro-batches of train_batch_size
    traj = policy.sample(prompts)
    a = cfg.algorithm
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-12)  # steps taken, weights ~unchanged
    advantages = torch.randn(len(prompts), device=device)
    mb = getattr(a, "train_batch_size", 16)

    def ppo_steps():
        for start in range(0, len(prompts), mb):
            s = slice(start, start + mb)
            for j in range(len(timesteps)):
                log_prob = policy.log_prob(traj.latents[s, j], traj.next_latents[s, j], traj.timesteps[s, j], traj.prompt_embeds[s])
                loss, _ = ppo_clip_loss(log_prob, traj.log_probs[s, j], advantages[s], a.get("clip_range", 1e-4))
                (loss / len(timesteps)).backward()
            clipped_step(optimizer, policy.trainable_parameters(), 1.0)  # one step per micro-batch, as PPO's window

    def bare_ppo_steps():
        for start in range(0, len(prompts), mb):
            s = slice(start, start + mb)
            for j in range(len(timesteps)):
                bare_unet(policy, traj.latents[s, j], traj.timesteps[s, j], traj.prompt_embeds[s]).float().mean().backward()
                optimizer.zero_grad(set_to_none=True)

    trained = len(prompts) * len(timesteps)
    out["ppo_train_s"] = timed(ppo_steps, repeats)
    out["ppo_train_bare_s"] = timed(bare_ppo_steps, repeats)
    out["ppo_timesteps_per_s"] = trained / out["ppo_train_s"]

    # (c) SEIKO: gradient through the last k steps of the chain, KL to a frozen reference
    k = int(a.get("truncation_steps", 3))
    reference = copy.deepcopy(policy.unet).requires_grad_(False)
    batch = prompts[:mb]
    batch_embeds = embeds[:mb]
    x_small = policy.initial_latents(len(batch))

    def seiko_step():
        images, kl = policy.sample_with_grad(batch, k, reference, checkpoint=True)
        (images.mean() + kl.mean()).backward()
        optimizer.zero_grad(set_to_none=True)

    def bare_seiko_step():
        y = x_small
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(i >= len(timesteps) - k):
                y = bare_unet(policy, y, t, batch_embeds)[: len(batch)]  # keep the chain's shape
        y.float().mean().backward()
        optimizer.zero_grad(set_to_none=True)

    out["truncation_steps"] = k
    out["seiko_step_s"] = timed(seiko_step, repeats)
    out["seiko_step_bare_s"] = timed(bare_seiko_step, repeats)

    for name in ("sample", "ppo_train", "seiko_step"):
        out[f"{name}_ratio"] = out[f"{name}_s"] / out[f"{name}_bare_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def table(r: dict) -> str:
    rows = [
        ("sampling", f"{r['sample_images_per_s']:.1f} images/s", r["sample_s"], r["sample_bare_s"], r["sample_ratio"]),
        ("PPO training", f"{r['ppo_timesteps_per_s']:.1f} timesteps/s", r["ppo_train_s"], r["ppo_train_bare_s"], r["ppo_train_ratio"]),
        ("SEIKO step", f"{r['truncation_steps']} steps with grad", r["seiko_step_s"], r["seiko_step_bare_s"], r["seiko_step_ratio"]),
    ]
    lines = [f"{'':14} {'throughput':>20} {'rlft s':>9} {'bare UNet s':>12} {'ratio':>7} {'outside UNet':>13}"]
    for name, throughput, actual, bare, ratio in rows:
        lines.append(f"{name:14} {throughput:>20} {actual:9.3f} {bare:12.3f} {ratio:7.2f} {1 - 1 / ratio:12.0%}")
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB" + (f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""))
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_DIR, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    result = bench(cfg)
    print(table(result))
    path = Path(HydraConfig.get().runtime.output_dir) / "bench.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


check_config_dir()

if __name__ == "__main__":
    main()
