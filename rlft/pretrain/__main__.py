"""`rlft pretrain [pretrain=unet|unet_flow|classifier]` (or `python -m rlft.pretrain`): reproduce the shipped weights."""

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from rlft.assets import ASSETS_DIR
from rlft.run.cli import quiet_console
from rlft.run.config import CONFIG_DIR, check_config_dir
from rlft.data.digits import load_digits


def pretrain(cfg: DictConfig) -> str:
    L.seed_everything(cfg.seed, workers=True)
    images, labels = load_digits(cfg.image_size)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
    n_val = int(len(images) * cfg.pretrain.val_fraction)
    val, train = order[:n_val], order[n_val:]
    train_loader = DataLoader(TensorDataset(images[train], labels[train]), cfg.batch_size, shuffle=True, drop_last=True)
    val_loader = DataLoader(TensorDataset(images[val], labels[val]), 500) if n_val else None

    run_dir = HydraConfig.get().runtime.output_dir
    trainer = L.Trainer(
        max_steps=cfg.pretrain.max_steps,
        logger=TensorBoardLogger(run_dir, name="", version="", default_hp_metric=False),
        enable_checkpointing=False,
        check_val_every_n_epoch=5,
        log_every_n_steps=25,
        accelerator=cfg.accelerator,
    )
    module = instantiate(cfg.pretrain.module)
    trainer.fit(module, train_loader, val_loader)
    output_dir = cfg.output_dir or str(ASSETS_DIR / cfg.pretrain.name)
    module.save_pretrained(output_dir)
    print(f"saved {cfg.pretrain.name} to {output_dir}")
    return output_dir


@hydra.main(config_path=CONFIG_DIR, config_name="pretraining", version_base="1.3")
def main(cfg: DictConfig) -> None:
    quiet_console()
    pretrain(cfg)


check_config_dir()

if __name__ == "__main__":
    main()
