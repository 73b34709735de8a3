"""LoRA weights a user can take away: after every epoch, the denoiser's LoRA in diffusers'
format (`pytorch_lora_weights.safetensors`), loadable into the model's plain diffusers pipeline:

    pipe = StableDiffusionPipeline.from_pretrained(BASE); pipe.load_lora_weights("RUN/lora")
    pipe = StableDiffusion3Pipeline.from_pretrained(BASE); pipe.load_lora_weights("RUN/lora")

Which key format that pipeline reads is the model family's to say (`DiffusionModel.save_lora`).
"""

from pathlib import Path

import lightning as L
from peft.utils import get_peft_model_state_dict

from rlft.run.sharding import full_tensors, uses_fsdp2


class LoraExport(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = pl_module.policy
        if not getattr(policy.denoiser, "peft_config", None):
            return  # full fine-tuning: the Lightning checkpoint holds the weights
        state = None
        if uses_fsdp2(trainer):  # every process gathers the sharded LoRA; rank 0 writes it
            state = full_tensors(get_peft_model_state_dict(policy.denoiser))
        if trainer.is_global_zero:
            policy.model.save_lora(policy.denoiser, self.dirpath, state)
