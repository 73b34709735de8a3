"""FSDP2 through Lightning (`trainer=fsdp2`: `ModelParallelStrategy`): the denoiser sharded over the
processes, block by block and then as a whole (torch's `fully_shard`), frozen base weights with
the trained ones, so that a process holds 1/N of them. The rest of the policy (text encoders,
VAE) and the rewards stay whole on every process: they are not trained.

What assumes one whole copy of the denoiser is either made to work sharded here or refused at
composition (`check_fsdp2`): the gradient norm clipped over all shards (`clip_grad_norm_` on DTensors),
the LoRA export gathered on every process before rank 0 writes it (`full_tensors`), the KL
reference and NFT's and AWM's second adapter (flags and per-shard copies: nothing to gather).
"""

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from rlft.checks import check
from rlft.diffusion.dtensors import gathered

# The algorithms trained sharded; SEIKO's truncated backpropagation through the sampling chain and
# its reward ensemble are not ported yet.
SHARDED_ALGORITHMS = ("ppo", "grpo", "ddpo_sf", "rwr", "nft", "awm")


def uses_fsdp2(trainer) -> bool:
    return trainer is not None and isinstance(getattr(trainer, "strategy", None), ModelParallelStrategy)


def blocks(denoiser: nn.Module) -> list[nn.Module]:
    """The denoiser's repeated blocks, each one FSDP unit: every member of its top-level module
    lists (a transformer's `transformer_blocks`, `single_transformer_blocks`, Wan's `blocks`; a
    UNet's `down_blocks`, `up_blocks`) and a UNet's `mid_block`."""
    units = [block for child in denoiser.children() if isinstance(child, nn.ModuleList) for block in child]
    mid = getattr(denoiser, "mid_block", None)
    return units + ([mid] if isinstance(mid, nn.Module) else [])


def shard_denoiser(denoiser: nn.Module, mesh) -> None:
    """`fully_shard` each block, then the denoiser (its embeddings, norms and projections). On a GPU
    the blocks compute in bfloat16 and reduce gradients in float32; on the CPU in their own dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    options = {"mesh": mesh}
    if mesh.device_type == "cuda":
        options["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks(denoiser):
        fully_shard(block, **options)
    fully_shard(denoiser, **options)


def full_tensors(state: dict) -> dict:
    """A state dict's sharded tensors gathered whole (a collective: every process calls it)."""
    return {k: gathered(v) for k, v in state.items()}


def check_fsdp2(cfg) -> None:
    """`trainer=fsdp2` at composition: more than one process, an algorithm that trains sharded,
    LoRA (full fine-tuning's sharded checkpoints are not written yet), no torch.compile."""
    strategy = cfg.trainer.get("strategy")
    target = strategy.get("_target_", "") if hasattr(strategy, "get") else str(strategy)
    if not target.endswith("ModelParallelStrategy"):
        return
    from rlft.run.distributed import world_size

    world = world_size(cfg.trainer)
    check(world is None or world > 1, "trainer.devices", cfg.trainer.devices,
          "must be > 1 with trainer=fsdp2: one process has nothing to shard the model over (use trainer=default)")
    check(cfg.algorithm.name in SHARDED_ALGORITHMS, "algorithm", cfg.algorithm.name,
          f"does not train sharded yet (trainer=fsdp2 trains {', '.join(SHARDED_ALGORITHMS)}): use trainer.strategy=ddp")
    check(cfg.policy.lora_rank is not None, "policy.lora_rank", None,
          "full fine-tuning under trainer=fsdp2 is not supported yet (its sharded checkpoint and references are not "
          "written): train LoRA (policy.lora_rank=32), or use trainer.strategy=ddp")
    check(cfg.policy.get("compile", False) in (False,), "policy.compile", cfg.policy.get("compile"),
          "must be false with trainer=fsdp2 (the compiled graphs are not built for sharded parameters yet)")
