"""The memory plan of a run: its peak per process in each phase, and what makes it up.

The run is composed exactly as training composes it, and its model is built through the family's
own loader on the `meta` device (`rlft.memory.meta`: the real architecture, from the model's
config files or the published ones rlft ships; no weights, no memory). The phases then run the
policy's real code on meta tensors, and `rlft.memory.trace.LiveBytes` counts every tensor they
create until it is freed:

- encoding: the text encoders on a batch of prompts (`cache_prompts`' batch), before they are freed;
- sampling (with decoding): `policy.sample` on one sampling chunk, CFG and the VAE included;
- training: `policy.log_prob` with gradient and its backward on one micro-batch (CFG's branches
  as `policy.cfg_gradient` runs them, gradient checkpointing as `model.gradient_checkpointing`);
- evaluation: sampling a chunk with the held-out rewards' weights held besides.

On top of each: the weights held all run long (denoiser, VAE, reward models), the trained
weights' gradients and AdamW's two moments (float32), and the epoch's stored trajectories
(latents, log-probabilities, prompt embeddings, images: measured per sample from the traced chunk,
times the samples a process keeps; none with `algorithm.offload`, which keeps them in host memory). Reward models are counted from their published parameter counts
(estimated; their activations at 224 px are not planned). What the trace cannot see, the CUDA
context and the caching allocator's slack, is `OVERHEAD` beside it.
"""

import math
from dataclasses import dataclass, field

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from rlft.memory.host import trajectory_bytes
from rlft.memory.meta import on_meta_device
from rlft.memory.trace import LiveBytes, traced_attention
from rlft.models.loading import DTYPES
from rlft.run.sharding import blocks

GiB = 2**30
# The CUDA context and kernels (about 0.5-1 GiB on an H100) and the caching allocator's
# fragmentation (up to about a tenth of the peak): added to the traced peak before the fit check.
OVERHEAD = {"fixed": 1 * GiB, "fraction": 0.10}
# The prompt planned with when the run's prompt files are not given (a preset that requires them):
# about 77 tokens of text, longer than most of PickScore's and GenEval's prompts.
PLANNED_PROMPT = "a photograph of " + "a red fox sitting in fresh snow under soft winter light, " * 5
ENCODE_BATCH = 64  # `DiffusionPolicy.cache_prompts`' batch
# Published parameter counts of the reward models (their float32 weights are held on the device).
REWARD_PARAMETERS = {
    "pickscore": 986e6,  # CLIP ViT-H/14 (PickScore_v1)
    "hpsv2": 986e6,  # CLIP ViT-H/14 (HPS v2.1)
    "clipscore": 428e6,  # CLIP ViT-L/14
    "aesthetic": 428e6,  # CLIP ViT-L/14 + the LAION aesthetic MLP
    "imagereward": 447e6,  # BLIP (ViT-L) + its MLP
    "geneval": 497e6,  # Mask2Former (Swin-S) + CLIP ViT-L/14
    "ocr": 100e6,  # PP-OCRv5 detection + recognition (server)
}


@dataclass
class Phase:
    name: str
    parts: dict[str, int] = field(default_factory=dict)  # what -> bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def with_overhead(self) -> int:
        return int(self.total * (1 + OVERHEAD["fraction"]) + OVERHEAD["fixed"])

    def largest(self, n: int = 3) -> list[tuple[str, int]]:
        return sorted(self.parts.items(), key=lambda kv: -kv[1])[:n]


@dataclass
class Plan:
    phases: list[Phase]
    processes: int
    notes: list[str]
    latent_size: int = 0

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def weights_by_dtype(module) -> str:
    counts = {}
    for p in module.parameters():
        counts[str(p.dtype).removeprefix("torch.")] = counts.get(str(p.dtype).removeprefix("torch."), 0) + p.numel()
    return ", ".join(f"{n / 1e9:.2f}B {d}" for d, n in counts.items())


def reward_bytes(reward_cfg: DictConfig) -> int:
    name = reward_cfg.get("name", "")
    if name == "multi":
        return sum(REWARD_PARAMETERS.get(str(c), 0) * 4 for c in reward_cfg.get("components", {}) or {})
    return int(REWARD_PARAMETERS.get(name, 0) * (2 if reward_cfg.get("dtype") in ("bfloat16", "float16") else 4))


def processes(cfg: DictConfig) -> int:
    devices = cfg.trainer.get("devices", 1)
    count = devices if isinstance(devices, int) else len(devices) if not isinstance(devices, str) else 1
    return max(1, count) * int(cfg.trainer.get("num_nodes", 1) or 1)


def planned_prompt(cfg: DictConfig) -> str:
    """The run's longest prompt (its sequence is the longest where a tokenizer does not pad), or
    `PLANNED_PROMPT` when the run's prompt files are required and not given."""
    try:
        prompts = [*cfg.model.prompts.train, *cfg.model.prompts.eval]
    except Exception:  # e.g. a preset's required prompt files, not given to plan
        return PLANNED_PROMPT
    return max(prompts, key=len)


def trajectory_bytes_per_sample(traj, storage_dtype: str | None) -> int:
    """What a stored sample keeps until the update (`Trajectories.store`): the latents before and
    after each stochastic step and the clean one (in `algorithm.storage_dtype`), its prompt
    embedding and decoded image, log-probabilities and timesteps."""
    dtype = DTYPES[storage_dtype] if storage_dtype else None
    return (trajectory_bytes(traj, dtype) + nbytes([traj.log_probs, traj.timesteps])) // len(traj)


def plan_run(cfg: DictConfig) -> Plan:
    """The plan of the run `cfg` composes, per process."""
    algorithm = cfg.algorithm
    sample_batch = int(algorithm.get("sample_batch_size") or 1)
    train_batch = int(algorithm.get("train_batch_size") or sample_batch)
    world = processes(cfg)
    kept = math.ceil(cfg.data.samples_per_epoch / world)
    prompt = planned_prompt(cfg)
    with on_meta_device(), traced_attention():
        components = instantiate(cfg.model.load)
        policy = instantiate(cfg.policy, **components, compile=False)
        model = policy.model
        encoders = {name: getattr(model, name) for name in model.text_encoders if getattr(model, name, None) is not None}
        with torch.no_grad(), LiveBytes() as encoding:
            model.encode_prompts([prompt] * ENCODE_BATCH)
        encoder_weights = sum(nbytes(e.parameters()) for e in encoders.values())
        # (kept for sampling's own encoding, which is tiny next to the rest; counted in the encoding phase only)
        with torch.no_grad(), LiveBytes() as sampling:
            traj = policy.sample([prompt] * sample_batch)
        per_sample = trajectory_bytes_per_sample(traj, algorithm.get("storage_dtype"))
        steps = traj.latents.shape[1]
        rows = (torch.arange(train_batch) % len(traj)).to(traj.latents.device)  # a micro-batch of the chunk's samples
        with LiveBytes() as training:
            log_prob = policy.log_prob(traj.latents[rows, 0], traj.next_latents[rows, 0], traj.timesteps[rows, 0],
                                       traj.prompt_embeds[rows])
            log_prob.sum().backward()
        trained = policy.trainable_parameters()
        frozen = [p for p in policy.denoiser.parameters() if not p.requires_grad]
        state = {"trained weights": nbytes(trained), "gradients (float32)": 4 * sum(p.numel() for p in trained),
                 "AdamW moments (float32)": 8 * sum(p.numel() for p in trained)}
        held = {"denoiser (frozen)": nbytes(frozen), "VAE and other frozen parts": nbytes(model.parameters()) - encoder_weights,
                "reward model": reward_bytes(cfg.reward)}
        if "ModelParallelStrategy" in str(cfg.trainer.get("strategy")) and world > 1:
            # trainer=fsdp2: a process holds 1/N of the denoiser and of its training state, and gathers
            # two blocks whole at a time (the one computing and the next, prefetched)
            gathered_blocks = 2 * max(nbytes(b.parameters()) for b in blocks(policy.denoiser))
            del held["denoiser (frozen)"]
            held[f"denoiser (frozen): 1/{world} shard + 2 blocks gathered"] = nbytes(frozen) // world + gathered_blocks
            state = {f"{k}: 1/{world} shard": v // world for k, v in state.items()}
        evaluation_rewards = sum(reward_bytes(DictConfig({"name": str(n)})) for n in cfg.evaluation.get("rewards", []) or [])
        offload = bool(algorithm.get("offload", False))
        trajectories = {f"stored trajectories ({kept} samples x {steps} steps)": 0 if offload else per_sample * kept}
        phases = [
            Phase("encoding", {**held, **{k: v for k, v in state.items() if k.startswith("trained weights")},
                               "text encoders": encoder_weights,
                               f"encoding activations ({ENCODE_BATCH} prompts)": encoding.peak}),
            Phase("sampling", {**held, **state, **trajectories,
                               f"sampling and decoding ({sample_batch} samples)": sampling.peak}),
            Phase("training", {**held, **state, **trajectories,
                               f"forward and backward ({train_batch} samples)": training.peak}),
            Phase("evaluation", {**held, **state, "held-out rewards": evaluation_rewards,
                                 f"sampling and decoding ({sample_batch} samples)": sampling.peak}),
        ]
    notes = [f"denoiser: {weights_by_dtype(policy.denoiser)}; text encoders: "
             + ("; ".join(f"{n} {weights_by_dtype(e)}" for n, e in encoders.items()) or "none"),
             f"latents {tuple(traj.latents.shape[2:])}, {steps} stored steps, {per_sample / 2**20:.1f} MiB stored a sample"
             + (f" (in host memory: {per_sample * kept / GiB:.1f} GiB a process, algorithm.offload)" if offload else "")]
    return Plan(phases, world, notes, policy.latent_size)


def fit_advice(cfg: DictConfig, plan: Plan) -> str:
    """The settings that bring the peak phase down, for a plan that does not fit."""
    phase, algorithm = plan.peak, cfg.algorithm
    knobs = []
    if phase.name == "encoding":
        knobs.append("model.dtype=bfloat16 (the text encoders' weights)" if cfg.model.get("dtype") == "float32" else
                     "fewer or smaller text encoders (e.g. model.use_t5=false on SD3)")
    if phase.name == "training":
        if "ModelParallelStrategy" not in str(cfg.trainer.get("strategy")):
            knobs.append("trainer=fsdp2 (the denoiser sharded over the processes)")
        if (algorithm.get("train_batch_size") or 1) > 1:
            knobs.append(f"algorithm.train_batch_size={algorithm.train_batch_size} (smaller)")
        if not cfg.model.get("gradient_checkpointing", False):
            knobs.append("model.gradient_checkpointing=true")
    if phase.name in ("sampling", "training") and not algorithm.get("offload", False):
        knobs.append("algorithm.offload=true (the epoch's trajectories in host memory)")
    if phase.name in ("sampling", "evaluation") and (algorithm.get("sample_batch_size") or 1) > 1:
        knobs.append(f"algorithm.sample_batch_size={algorithm.sample_batch_size} (smaller)")
    if "num_frames" in cfg.model:
        knobs.append(f"model.num_frames={cfg.model.num_frames} or model.height/width (fewer frames or pixels)")
    else:
        knobs.append(f"policy.latent_size (now {plan.latent_size}; smaller: fewer pixels)")
    if phase.name != "training" or not knobs:
        knobs.append(f"trainer.devices (more processes share data.samples_per_epoch={cfg.data.samples_per_epoch})")
    return ", ".join(knobs)


def size(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def describe(plan: Plan, device_bytes: int | None = None) -> str:
    lines = [f"memory plan per process ({plan.processes} process{'es' if plan.processes > 1 else ''}), traced on the "
             f"meta device (GiB = 2^30 bytes); with overhead: + the CUDA context and the allocator's slack "
             f"({OVERHEAD['fixed'] / GiB:.0f} GiB + {OVERHEAD['fraction']:.0%}, estimated)"]
    width = max(len(p.name) for p in plan.phases)
    for phase in plan.phases:
        largest = ", ".join(f"{name} {size(n)}" for name, n in phase.largest())
        lines.append(f"  {phase.name:<{width}}  {size(phase.total):>10}  (with overhead {size(phase.with_overhead()):>10})"
                     f"  largest: {largest}")
    lines += [f"  {note}" for note in plan.notes]
    if device_bytes:
        peak = plan.peak
        verdict = "fits" if peak.with_overhead() <= device_bytes else "does NOT fit"
        lines.append(f"peak: {peak.name}, {size(peak.with_overhead())} with overhead: {verdict} in {size(device_bytes)}")
    return "\n".join(lines)
