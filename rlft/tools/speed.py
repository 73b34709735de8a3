"""`rlft speed [model=...] [overrides]`: where the time goes, measured in one run.

RL fine-tuning of a diffusion model is bound by UNet compute. Each figure below is the
algorithm's own code against a bare loop of the same UNet calls on the same batch shapes,
the two called alternately in the same process, so the ratio (1.00 = no overhead) survives
a shared, noisy machine better than either time alone:

- sampling: `DiffusionPolicy.sample` (CFG, DDIM step, log-prob, decoding) vs `num_steps`
  bare UNet forwards on the CFG-doubled batch, in inference mode;
- PPO training: the algorithm's own `update` (`rlft.algorithms.pipeline.OnlineRL.update`, built
  as training builds it; PPO's: `policy.log_prob` + `ppo_clip_loss` + backward + the clipped
  optimizer step for each trained timestep), vs bare UNet forward + backward into the LoRA
  weights for the same passes;
- SEIKO fine-tuning: `policy.sample_with_grad` through the truncated chain with its KL to a
  reference UNet, vs bare forwards with the same graph (no checkpointing, no reference);
- peak memory (RSS; CUDA max_memory_allocated on a GPU);
- speed for memory: PPO's micro-batch size and UNet gradient checkpointing, SEIKO's
  checkpointing of the chain, each setting timed with its peak memory in a fresh process;
- `policy.compile` (torch.compile of the denoiser): compiled sampling and PPO training over
  the same bare eager loops, the compile time, and the ratio over a run of the config's length
  with the compile time included (`speed.compile`, on);
- trials of other levers (channels-last, bfloat16 autocast, merged LoRA for sampling) over
  the same bare loops (`speed.trials=true`);
- the work of each measured call in UNet sample-evaluations (`*_unet_evals`, the unit of a
  run's `work/unet_evals`) and the time per evaluation (`*_ms_per_unet_eval`).
Prints a table and writes speed.json in the run directory, and speed.md: the manual's
Performance table made from it.
"""

import json
import math
import multiprocessing
import re
import resource
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rlft.checks import ConfigError, constructor_node, target_class
from rlft.run.config import CONFIG_DIR, check_config_dir
from rlft.run.train import matmul_precision
from rlft.diffusion.noise import sample_generators
from rlft.diffusion.reference import snapshot
from rlft.tools.size_check import size_check, size_table


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    return statistics.median(_seconds(fn) for _ in range(repeats))


def timed_pair(fn, bare, repeats: int) -> tuple[float, float]:
    """Medians of `fn` and `bare`, called alternately: a shared machine's slow spells fall on
    both, not on whichever ran second."""
    fn(), bare()
    pairs = [(_seconds(fn), _seconds(bare)) for _ in range(repeats)]
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def counting_work(policy, fn):
    """`fn` wrapped to record the work of each call in UNet sample-evaluations
    (`DiffusionPolicy.count_work`: forward 1, forward + backward 3, checkpointing's recompute 1
    more, CFG doubles), the unit of a run's `work/unet_evals`, so that a bench's ms per
    evaluation prices a run's work. Counted in the timed calls themselves: no extra call."""
    work = []

    def call():
        before = policy.unet_evaluations
        fn()
        work.append(policy.unet_evaluations - before)

    return call, work


def bare_denoiser(policy, latents, timestep, embeds):
    """The policy's own denoiser call (`DiffusionPolicy.denoiser_outputs`: CFG batch doubled),
    nothing around it, eager even when the denoiser is compiled (its `forward`, not its
    compiled `__call__`)."""
    return policy.denoiser_outputs(latents, timestep, embeds, denoiser=policy.denoiser.forward)


def machine() -> str:
    """What the timings came from: the CPU's model, cores and widest vector unit (the same
    run differs by up to 4x between 2-core machines: docs/performance.md), or the GPU."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    flags = cpuinfo("flags").split()
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{cpuinfo('model name') or 'unknown CPU'}, {torch.get_num_threads()} threads, {vector}"


def cpuinfo(field: str) -> str:
    """A field of /proc/cpuinfo's first processor ('' where there is none)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    match = re.search(rf"^{re.escape(field)}[ \t]*:[ \t]*(.*)$", info, re.MULTILINE)  # "flags", not "vmx flags"
    return match.group(1) if match else ""


def native_bfloat16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 (elsewhere autocast to it is emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(flag in cpuinfo("flags").split() for flag in ("avx512_bf16", "amx_bf16"))


def load_policy(cfg: DictConfig):
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    policy = instantiate(cfg.policy, compile=False, **instantiate(cfg.model.load)).to(device)  # eager: the baseline
    prompts = [cfg.model.prompts.train[i % len(cfg.model.prompts.train)] for i in range(cfg.speed.samples)]
    return policy, prompts, device


def sample(policy, prompts, seed: int = 0):
    """What PPO's rollout does: every sample its own noise generator."""
    return policy.sample(prompts, generator=sample_generators(seed, "rollout", 0, range(len(prompts)), policy.device))


def algorithm(cfg: DictConfig, policy, optimizer, micro_batch: int | None = None):
    """The run's algorithm module, as training builds it, without a Trainer (`RLModule.standalone`):
    its `update` is what an epoch's training runs. No reward or evaluation is built (nothing is scored)."""
    node = constructor_node(cfg.algorithm)
    overrides = {"reward_fn": None, "evaluation": None, "progress": False}
    if micro_batch is not None:
        overrides["train_batch_size"] = micro_batch
    module = instantiate(node, policy=policy, **{k: v for k, v in overrides.items() if k in node})
    return module.to(policy.device).standalone(optimizer)


def seiko_step(policy, batch, truncation_steps: int, reference, checkpoint: bool, optimizer):
    images, kl = policy.sample_with_grad(batch, truncation_steps, reference, checkpoint=checkpoint)
    (images.mean() + kl.mean()).backward()
    optimizer.zero_grad(set_to_none=True)


def measure(cfg: DictConfig) -> dict:
    if not hasattr(target_class(cfg.algorithm), "update"):
        raise ConfigError(f"algorithm={cfg.algorithm.name} is invalid here: rlft speed times the update of a sampling-based "
                          "algorithm (ppo, grpo, ddpo_sf, rwr, nft, awm) beside SEIKO's fine-tuning step, which it "
                          "measures with any of them: run it with algorithm=ppo (the default)")
    L.seed_everything(cfg.seed)
    policy, prompts, device = load_policy(cfg)
    embeds = policy.encode_prompts(prompts)
    timesteps = policy.sampler.timesteps.to(device)
    x = policy.initial_latents(len(prompts))
    repeats = cfg.speed.repeats
    out = {"device": device, "machine": machine(), "samples": len(prompts), "num_steps": len(timesteps),
           "trainable_parameters": sum(p.numel() for p in policy.trainable_parameters())}

    # (a) sampling
    def bare_sampling():
        with torch.inference_mode():
            for t in timesteps:
                bare_denoiser(policy, x, t, embeds)
    sampling, sample_work = counting_work(policy, lambda: sample(policy, prompts))
    out["sample_s"], out["sample_bare_s"] = timed_pair(sampling, bare_sampling, repeats)
    out["sample_images_per_s"] = len(prompts) / out["sample_s"]

    # (b) the algorithm's update (PPO by default): its own `update`, micro-batches of train_batch_size
    traj = sample(policy, prompts)
    a = cfg.algorithm
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-12)  # steps taken, weights ~unchanged
    advantages = torch.randn(len(prompts), device=device)
    mb = a.train_batch_size
    module = algorithm(cfg, policy, optimizer)
    train_steps = module.trained_steps(traj.log_probs.shape[1])  # of the recorded steps: an SDE window's

    def bare_ppo_steps():  # the same backward passes: each micro-batch at each trained step, per inner epoch
        for _ in range(module.num_inner_epochs):
            for start in range(0, len(prompts), mb):
                s = slice(start, start + mb)
                for j in range(train_steps):
                    bare_denoiser(policy, traj.latents[s, j], traj.timesteps[s, j], traj.prompt_embeds[s]).float().mean().backward()
                    optimizer.zero_grad(set_to_none=True)

    trained = len(prompts) * train_steps * module.num_inner_epochs
    ppo_training, ppo_work = counting_work(policy, lambda: module.update(traj, advantages))
    out["ppo_train_s"], out["ppo_train_bare_s"] = timed_pair(ppo_training, bare_ppo_steps, repeats)
    out["ppo_timesteps_per_s"] = trained / out["ppo_train_s"]

    # (c) SEIKO: gradient through the last k steps of the chain, KL to a frozen reference
    k = int(a.get("truncation_steps", 3))
    reference = snapshot(policy)  # a second adapter, as SEIKO after its first round
    batch = prompts[:mb]
    batch_embeds = embeds[:mb]
    x_small = policy.initial_latents(len(batch))

    def bare_seiko_step():
        y = x_small
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(i >= len(timesteps) - k):
                y = bare_denoiser(policy, y, t, batch_embeds)[: len(batch)]  # keep the chain's shape
        y.float().mean().backward()
        optimizer.zero_grad(set_to_none=True)

    out["truncation_steps"] = k
    seiko_stepping, seiko_work = counting_work(policy, lambda: seiko_step(policy, batch, k, reference, True, optimizer))
    out["seiko_step_s"], out["seiko_step_bare_s"] = timed_pair(seiko_stepping, bare_seiko_step, repeats)

    if policy.batched_guidance:
        out |= cfg_branch_figures(policy, traj, mb, repeats)

    for name, work in (("sample", sample_work), ("ppo_train", ppo_work), ("seiko_step", seiko_work)):
        out[f"{name}_unet_evals"] = work[-1]  # every call does the same work
        out[f"{name}_ratio"] = out[f"{name}_s"] / out[f"{name}_bare_s"]
        out[f"{name}_ms_per_unet_eval"] = 1000 * out[f"{name}_s"] / out[f"{name}_unet_evals"]
    phases = {"sample": (sampling, bare_sampling), "ppo_train": (ppo_training, bare_ppo_steps)}
    if cfg.speed.trials:
        out["trials"] = trials(policy, phases, repeats)
    if cfg.speed.compile:  # last: compiling is not undone
        out |= compiled_figures(cfg, policy, phases, {name: out[f"{name}_unet_evals"] for name in phases})
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def saved_for_backward_mb(fn) -> float:
    """MB of the tensors autograd keeps for the backward pass while `fn` runs (each storage once):
    the activations a training step holds, measured the same way on any device."""
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        fn()
    return sum(storages.values()) / 2**20


def cfg_branch_figures(policy, traj, micro_batch: int, repeats: int) -> dict:
    """A training step with classifier-free guidance whose unconditional branch carries no gradient
    (`policy.cfg_gradient=conditional`): its own call without gradient (rlft's) against the former
    batched call with that branch detached (flow_grpo's form), forward and backward of one micro-batch
    at one step, alternately timed; and the activations each keeps for its backward pass."""
    s = slice(0, micro_batch)
    latents, t, embeds = traj.latents[s, 0], traj.timesteps[s, 0], traj.prompt_embeds[s]
    former = policy.cfg_gradient
    policy.cfg_gradient = "conditional"

    def split():
        policy.guided_prediction(latents, t, embeds).float().mean().backward()

    def batched_detached():
        uncond, cond = policy.denoiser_outputs(latents, t, embeds).chunk(2)
        policy.model.combine_guidance(uncond.detach(), cond, policy.guidance_scale).float().mean().backward()

    try:
        split_s, batched_s = timed_pair(split, batched_detached, repeats)
        split_mb, batched_mb = saved_for_backward_mb(split), saved_for_backward_mb(batched_detached)
    finally:
        policy.cfg_gradient = former
        for p in policy.trainable_parameters():
            p.grad = None
    return {"cfg_split_train_s": split_s, "cfg_batched_detached_train_s": batched_s, "cfg_split_ratio": split_s / batched_s,
            "cfg_split_saved_mb": split_mb, "cfg_batched_detached_saved_mb": batched_mb,
            "cfg_split_saved_ratio": split_mb / batched_mb}


def compiled_figures(cfg: DictConfig, policy, phases: dict, phase_work: dict) -> dict:
    """`policy.compile` measured: the denoiser compiled in place (with `cfg.policy.compile`'s
    options when it is a dict), then each phase's own code against the same bare eager loop
    as above, alternately. `*_compile_s`: the first compiled call less a steady one.
    `*_compiled_run_ratio`: a run of this config's length (its epochs x samples_per_epoch,
    PPO's trained fraction of the timesteps) compiled, compile time included, over the
    eager loop: where compiling pays back within the run, this is below 1."""
    options = cfg.policy.compile
    policy.compile_denoiser(OmegaConf.to_container(options) if isinstance(options, DictConfig) else {})
    per_run = cfg.algorithm.epochs * cfg.data.samples_per_epoch / cfg.speed.samples  # sampling calls a run makes
    calls = {"sample": per_run, "ppo_train": per_run}  # an epoch's update trains its own share of the steps
    out, saved, work = {}, 0.0, 0.0
    for name, (fn, bare) in phases.items():
        first = _seconds(fn)
        compiled, eager = timed_pair(fn, bare, cfg.speed.repeats)
        out[f"{name}_compiled_s"], out[f"{name}_compiled_ratio"] = compiled, compiled / eager
        out[f"{name}_compile_s"] = max(0.0, first - compiled)
        out[f"{name}_compiled_run_ratio"] = (calls[name] * compiled + out[f"{name}_compile_s"]) / (calls[name] * eager)
        saved += calls[name] * (eager - compiled)  # seconds a run of this length saves once compiled
        work += calls[name] * phase_work[name]
    # policy.compile=auto's threshold (compile_break_even): the run's work, in UNet evaluations, at
    # which the time saved equals the time compiling takes, at this config's mix of sampling and training.
    compile_s = sum(out[f"{name}_compile_s"] for name in phases)
    out["compile_break_even_unet_evals"] = compile_s * work / saved if saved > 0 else math.inf
    return out


# -- speed for memory: each setting in a fresh process, so that its peak is its own ------
def memory_settings(cfg: DictConfig) -> list[dict]:
    mb = cfg.algorithm.train_batch_size
    micro = sorted({m for m in (cfg.speed.samples, mb, max(1, mb // 2), max(1, mb // 4)) if cfg.speed.samples % m == 0}, reverse=True)
    return ([{"workload": "ppo", "micro_batch": m, "unet_checkpointing": False} for m in micro]
            + [{"workload": "ppo", "micro_batch": mb, "unet_checkpointing": True}]
            + [{"workload": "seiko", "micro_batch": mb, "chain_checkpointing": c} for c in (True, False)])


def _rss_mb(field: str) -> float:
    return float(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def measure_setting(cfg_container: dict, setting: dict) -> dict:
    """Runs in a child process: load, prepare, then time the workload with its peak memory
    above what was resident before it (RSS high-water mark reset through
    /proc/self/clear_refs on Linux; CUDA's peak counter on a GPU)."""
    cfg = OmegaConf.create(cfg_container)
    L.seed_everything(cfg.seed, verbose=False)
    policy, prompts, device = load_policy(cfg)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-12)
    if setting.get("unet_checkpointing"):
        policy.denoiser.enable_gradient_checkpointing()
    if setting["workload"] == "ppo":
        traj, advantages = sample(policy, prompts), torch.randn(len(prompts), device=device)
        module = algorithm(cfg, policy, optimizer, setting["micro_batch"])
        run = lambda: module.update(traj, advantages)
        work = len(prompts) * module.trained_steps(traj.log_probs.shape[1]) * module.num_inner_epochs  # trained timesteps
    else:
        reference = snapshot(policy)  # a second adapter, as SEIKO after its first round
        batch = prompts[: setting["micro_batch"]]
        k = int(cfg.algorithm.get("truncation_steps", 3))
        run = lambda: seiko_step(policy, batch, k, reference, setting["chain_checkpointing"], optimizer)
        work = 1
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss_mb("VmRSS")
    seconds = timed(run, cfg.speed.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else _rss_mb("VmHWM")
    return {**setting, "seconds": seconds, "per_unit_ms": 1000 * seconds / work, "peak_above_mb": peak - before}


def memory_trade(cfg: DictConfig) -> list[dict]:
    container = OmegaConf.to_container(cfg, resolve=True)
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return [pool.apply(measure_setting, (container, setting)) for setting in memory_settings(cfg)]


# -- library speed-ups, tried and measured: kept in rlft only where they win ---------------
def trials(policy, phases: dict, repeats: int) -> dict:
    """CPU and GPU levers other than compiling: each phase's time with the lever over the
    same bare eager loop (alternately; lower is better): channels-last memory format,
    bfloat16 autocast where the processor computes in bfloat16 (a GPU, or a CPU with
    AVX-512-BF16 or AMX: elsewhere it is emulated, 10x slower or more, and not measured), and
    for sampling the LoRA branch merged into the frozen weights (no gradient is needed
    there). Each lever is applied and undone around every call (its own cost included), so
    that the bare loop stays eager."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    lora_layers = [m for m in policy.denoiser.modules() if isinstance(m, BaseTunerLayer)]

    @contextmanager
    def channels_last():
        policy.denoiser.to(memory_format=torch.channels_last)
        try:
            yield
        finally:
            policy.denoiser.to(memory_format=torch.contiguous_format)

    @contextmanager
    def lora_merged():
        for layer in lora_layers:
            layer.merge()
        try:
            yield
        finally:
            for layer in lora_layers:
                layer.unmerge()

    levers = {"channels_last": (channels_last, phases),
              "bf16_autocast": (lambda: torch.autocast(policy.device.type, dtype=torch.bfloat16),
                                phases if native_bfloat16(policy.device) else {}),
              "lora_merged": (lora_merged, {"sample": phases["sample"]} if lora_layers else {})}
    out = {}
    for lever, (context, measured) in levers.items():
        for name, (fn, bare) in measured.items():
            def with_lever(fn=fn):
                with context():
                    fn()
            lever_s, bare_s = timed_pair(with_lever, bare, repeats)
            out[f"{name}_{lever}_ratio"] = lever_s / bare_s
    return out


def workloads(r: dict) -> tuple[tuple[str, str, str], ...]:
    """(label, key in speed.json, throughput) of each measured workload: the rows of both tables."""
    return (("sampling", "sample", f"{r['sample_images_per_s']:.1f} images/s"),
            ("PPO training", "ppo_train", f"{r['ppo_timesteps_per_s']:.0f} trained timesteps/s"),
            ("SEIKO step", "seiko_step", f"{r['truncation_steps']} steps with gradient"))


def table(r: dict) -> str:
    lines = [f"{'':14} {'throughput':>24} {'rlft s':>9} {'bare UNet s':>12} {'ratio':>7} {'outside UNet':>13} {'ms/UNet eval':>13}"]
    for name, key, throughput in workloads(r):
        ratio = r[f"{key}_ratio"]
        lines.append(f"{name:14} {throughput:>24} {r[f'{key}_s']:9.3f} {r[f'{key}_bare_s']:12.3f} {ratio:7.2f} "
                     f"{1 - 1 / ratio:12.0%} {r[f'{key}_ms_per_unet_eval']:13.3f}")
    lines.insert(0, f"on {r['machine']}")
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB" + (f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""))
    if r.get("memory_trade"):
        lines += ["", "speed for memory (each in a fresh process):",
                  f"{'workload':9} {'micro-batch':>11} {'checkpointing':>14} {'ms per unit':>12} {'peak above start MB':>20}"]
        for m in r["memory_trade"]:
            ckpt = "UNet" if m.get("unet_checkpointing") else "chain" if m.get("chain_checkpointing") else "none"
            unit = "timestep" if m["workload"] == "ppo" else "step"
            lines.append(f"{m['workload']:9} {m['micro_batch']:>11} {ckpt:>14} {m['per_unit_ms']:8.1f}/{unit:<8} {m['peak_above_mb']:14.0f}")
    if "sample_compiled_ratio" in r:
        lines += ["", "policy.compile (torch.compile of the denoiser), against the same bare eager loop:",
                  f"{'':14} {'compiled/eager':>15} {'compile s':>10} {'over a run, compile included':>29}"]
        for name, key, _ in workloads(r)[:2]:
            lines.append(f"{name:14} {r[f'{key}_compiled_ratio']:15.2f} {r[f'{key}_compile_s']:10.1f} "
                         f"{r[f'{key}_compiled_run_ratio']:29.2f}")
        lines.append(f"compiling pays back above {r['compile_break_even_unet_evals'] / 1e6:.3f}M UNet evaluations "
                     "(compile_break_even, for policy.compile=auto)")
    if r.get("trials"):
        lines += ["", "other levers, time over the bare eager loop: " + ", ".join(f"{k} {v:.2f}" for k, v in r["trials"].items())]
    return "\n".join(lines)


def markdown(r: dict) -> str:
    """The manual's Performance table (docs/performance.md), from speed.json's figures (`speed.md` beside it)."""
    compiled = "sample_compiled_ratio" in r
    head = "| | throughput | rlft | bare UNet | ratio | UNet evals | ms per eval |"
    lines = [f"On {r['machine']}, {r['samples']} images, {r['num_steps']} steps, medians of the repeats:", "",
             head + (" compiled / eager | compile | a run's ratio, compile included |" if compiled else ""),
             "|---" * (head.count("|") - 1 + 3 * compiled) + "|"]
    for name, key, throughput in workloads(r):
        line = (f"| {name} | {throughput} | {r[f'{key}_s']:.2f} s | {r[f'{key}_bare_s']:.2f} s | {r[f'{key}_ratio']:.2f} "
                f"| {r[f'{key}_unet_evals']} | {r[f'{key}_ms_per_unet_eval']:.2f} |")
        if compiled:
            line += (f" {r[f'{key}_compiled_ratio']:.2f} | {r[f'{key}_compile_s']:.0f} s | {r[f'{key}_compiled_run_ratio']:.2f} |"
                     if f"{key}_compiled_ratio" in r else " | | |")
        lines.append(line)
    if "cfg_split_ratio" in r:
        lines += ["", f"A CFG training step whose unconditional branch carries no gradient (`policy.cfg_gradient=conditional`): "
                      f"its own call without gradient {r['cfg_split_train_s'] * 1000:.1f} ms against the batched call with the "
                      f"branch detached {r['cfg_batched_detached_train_s'] * 1000:.1f} ms ({r['cfg_split_ratio']:.2f}x); "
                      f"activations kept for backward {r['cfg_split_saved_mb']:.1f} MB against "
                      f"{r['cfg_batched_detached_saved_mb']:.1f} MB ({r['cfg_split_saved_ratio']:.2f}x)."]
    return "\n".join(lines) + "\n"


def write_size_check(workdir: str) -> None:
    """`speed.size_check=DIR`: SD1.5-size checkpoints and peak memory (rlft.tools.size_check)."""
    rows = size_check(workdir)
    print(size_table(rows))
    path = Path(HydraConfig.get().runtime.output_dir) / "size_check.json"
    path.write_text(json.dumps(rows, indent=2))
    print(f"wrote {path}")


@hydra.main(config_path=CONFIG_DIR, config_name="speed", version_base="1.3")
def main(cfg: DictConfig) -> None:
    torch.set_float32_matmul_precision(matmul_precision(cfg))
    if cfg.speed.size_check:
        return write_size_check(cfg.speed.size_check)
    result = measure(cfg)
    if cfg.speed.memory:
        result["memory_trade"] = memory_trade(cfg)
    print(table(result))
    path = Path(HydraConfig.get().runtime.output_dir) / "speed.json"
    path.write_text(json.dumps(result, indent=2))
    path.with_name("speed.md").write_text(markdown(result))
    print(f"wrote {path} and speed.md (the table of docs/performance.md)")


check_config_dir()

if __name__ == "__main__":
    main()
