"""LoRA weights a user can take away: after every epoch, the denoiser's LoRA in diffusers'
format (`pytorch_lora_weights.safetensors`), loadable into a plain diffusers pipeline:

    pipe = StableDiffusionPipeline.from_pretrained(BASE); pipe.load_lora_weights("RUN/lora")
    pipe = StableDiffusion3Pipeline.from_pretrained(BASE); pipe.load_lora_weights("RUN/lora")
"""

from pathlib import Path

import lightning as L
from diffusers import UNet2DConditionModel
from diffusers.loaders import SD3LoraLoaderMixin, StableDiffusionLoraLoaderMixin
from diffusers.utils import convert_state_dict_to_diffusers
from peft.utils import get_peft_model_state_dict


def save_lora(denoiser, dirpath: str | Path) -> None:
    """A UNet's LoRA as Stable Diffusion 1.x/2.x pipelines load it (diffusers' UNet key format);
    a transformer's in peft's key format, as SD3's loader reads it (and diffusers' SD3 LoRA
    training script writes it)."""
    config = denoiser.peft_config["default"]
    layers = get_peft_model_state_dict(denoiser)
    # rank and alpha travel with the weights, so the loader scales them as trained
    if isinstance(denoiser, UNet2DConditionModel):
        StableDiffusionLoraLoaderMixin.save_lora_weights(
            dirpath, unet_lora_layers=convert_state_dict_to_diffusers(layers),
            unet_lora_adapter_metadata=config.to_dict(), safe_serialization=True,
        )
    else:
        SD3LoraLoaderMixin.save_lora_weights(
            dirpath, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config.to_dict(),
            safe_serialization=True,
        )


class LoraExport(L.Callback):
    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        denoiser = pl_module.policy.denoiser
        if not trainer.is_global_zero or not getattr(denoiser, "peft_config", None):
            return  # full fine-tuning: the Lightning checkpoint holds the weights
        save_lora(denoiser, self.dirpath)
