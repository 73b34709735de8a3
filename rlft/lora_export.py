"""LoRA weights a user can take away: after every epoch, the UNet's LoRA in diffusers'
format (`pytorch_lora_weights.safetensors`), loadable into a plain diffusers pipeline:

    pipe = StableDiffusionPipeline.from_pretrained(BASE); pipe.load_lora_weights("RUN/lora")
"""

from pathlib import Path

import lightning as L
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict


class LoraExport(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        unet = pl_module.policy.unet
        if not trainer.is_global_zero or not getattr(unet, "peft_config", None):
            return  # full fine-tuning: the Lightning checkpoint holds the weights
        config = unet.peft_config["default"]
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            self.dirpath,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)),
            # rank and alpha travel with the weights, so the loader scales them as trained
            unet_lora_adapter_metadata=config.to_dict(),
            safe_serialization=True,
        )
