"""What a checkpoint holds, and how it is written.

A checkpoint holds what training changes: the trainable weights (LoRA, or the whole denoiser
under full fine-tuning), the optimizer state, the algorithm's RL state and any other module
the algorithm names (SEIKO's ensemble heads). The frozen base (VAE, text encoders, the base
denoiser, reward backbones) is reloaded from the config on resume, and the checkpoint stores
its fingerprint (`rlft.models.fingerprint`) and the adapter's settings, checked before
anything is loaded: a different base or LoRA shape is refused, naming both.

`AtomicCheckpointIO` writes each checkpoint to a temporary file beside it and renames it
into place: a run killed mid-write (SIGKILL, a node lost) leaves the previous `last.ckpt`
whole. It streams to the file, where Lightning's default first serialises the whole
checkpoint into memory.
"""

import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from rlft.models.fingerprint import describe, same_base
from rlft.checks import ConfigError

FORMAT = 2  # 1 (no "rlft_base" entry): the whole module, frozen base included


def atomic_save(obj, path: str | Path) -> None:
    """`torch.save` streamed to a temporary file beside `path`, synced, then renamed over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)  # atomic on POSIX: the old file or the new, never half of one


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        atomic_save(checkpoint, path)


def trained_keys(module: L.LightningModule, also: tuple[str, ...] = ()) -> list[str]:
    """State-dict keys of the trainable parameters, plus every key under the prefixes `also`."""
    trainable = {name for name, p in module.named_parameters(remove_duplicate=False) if p.requires_grad}
    return [k for k in module.state_dict(keep_vars=True) if k in trainable or k.startswith(also)]


def keep_trained_state(module: L.LightningModule, checkpoint: dict, also: tuple[str, ...] = ()) -> None:
    """Call from `on_save_checkpoint`: drops the frozen weights from the checkpoint."""
    keys = trained_keys(module, also)
    # (trainer=fsdp2 gathers the whole state dict on rank 0 alone: the other ranks' is empty, and not written)
    checkpoint["state_dict"] = {k: checkpoint["state_dict"][k] for k in keys if k in checkpoint["state_dict"]}
    policy = module.policy
    checkpoint["rlft_base"] = {"format": FORMAT, "fingerprint": policy.base_fingerprint, "adapter": policy.adapter_settings}


def check_base(policy, checkpoint: dict) -> None:
    """The checkpoint must be of this format and of the policy's base model and adapter."""
    base = checkpoint.get("rlft_base")
    if base is None or base.get("format") != FORMAT:
        raise ConfigError(
            "the checkpoint was written before rlft's checkpoints held only the trained weights and the base's "
            "fingerprint, so it cannot be checked against this run's base model; it is left as it is. Resume it with "
            "the rlft release that wrote it, or start afresh with ckpt_path=null (or a new hydra.run.dir)"
        )
    if not same_base(base["fingerprint"], policy.base_fingerprint):
        raise ConfigError(
            f"the checkpoint was trained on another base model than this run loads: checkpoint "
            f"{describe(base['fingerprint'])}, this run {describe(policy.base_fingerprint)}. Resume with the model "
            f"config it was trained with (model.pretrained, model.revision, model.variant, model.dtype)"
        )
    if base["adapter"] != policy.adapter_settings:
        raise ConfigError(
            f"the checkpoint's trainable weights are {base['adapter']}, this run's {policy.adapter_settings}: resume "
            f"with the policy.lora_* settings it was trained with"
        )


def check_resumable(module: L.LightningModule, checkpoint: dict, also: tuple[str, ...] = ()) -> None:
    """Call from `on_load_checkpoint`, before Lightning loads the weights: the checkpoint must
    be of this format, of the same base and adapter, and hold exactly this run's trained keys."""
    check_base(module.policy, checkpoint)
    state = checkpoint["state_dict"]
    current = module.state_dict(keep_vars=True)
    expected = {k: tuple(current[k].shape) for k in trained_keys(module, also)}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        shapes = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise ConfigError(
            f"the checkpoint's trained weights do not fit this run's model: missing {missing[:3]}, unexpected "
            f"{extra[:3]}, other shapes {[(k, found[k], expected[k]) for k in shapes[:3]]}"
        )


def load_trained_policy(policy, path: str | Path) -> dict:
    """The trained weights of a run's checkpoint into a freshly loaded `policy` (rlft.tools.sample);
    returns where in its run the checkpoint was written (`epoch`, `global_step`)."""
    # A run's own file; its hyper_parameters hold omegaconf containers, outside weights_only's allowlist.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    check_base(policy, checkpoint)
    weights = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    missing, unexpected = policy.load_state_dict(weights, strict=False)
    trainable = {name for name, p in policy.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise ConfigError(f"{path} does not fit this policy: unexpected {unexpected[:3]}, "
                          f"missing {sorted(trainable & set(missing))[:3]}")
    return {"epoch": checkpoint.get("epoch"), "global_step": checkpoint.get("global_step")}
