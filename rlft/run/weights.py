"""Before anything loads, the weights every reward names (trained, `reward=multi`'s components,
held-out evaluation rewards), where a Hugging Face hub id names them, are looked for in the local
cache or on the hub (`rlft.models.hub`), so that a run that cannot get them fails in seconds naming
the setting, not after the model has loaded. The model's own (`model.pretrained`) is looked for by
`rlft.models.loading.read_pipeline`, after the loader's own settings are checked, before it reads."""

from omegaconf import DictConfig, OmegaConf

from rlft.assets import CONFIG_DIR
from rlft.models.hub import check_hub_weights
from rlft.rewards.multi import component_configs


# The keys of a reward's config that name weights (a hub id or a local directory).
WEIGHT_KEYS = ("model_path", "processor_path", "clip_path", "detector_path", "detection_path", "recognition_path")


def weight_settings(node, where: str):
    """(setting, value) of every weight key under `node` (a plain container), depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in WEIGHT_KEYS and isinstance(value, str) and value != "???":
                yield f"{where}.{key}", value
            else:
                yield from weight_settings(value, f"{where}.{key}")


def check_weights(cfg: DictConfig) -> None:
    """Before anything loads: the rewards' weights, where a hub id names them, are in the local cache
    or can be fetched (`rlft.models.hub`): fails in seconds, naming the setting."""
    rewards = {"reward": OmegaConf.to_container(cfg.reward, resolve=True)}
    evaluation = cfg.get("evaluation") or {}
    for name, node in component_configs(list(evaluation.get("rewards") or []), evaluation.get("settings") or {}, CONFIG_DIR).items():
        rewards[f"evaluation.settings.{name}"] = OmegaConf.to_container(node, resolve=True)
    for where, node in rewards.items():
        for setting, value in weight_settings(node, where):
            check_hub_weights(value, setting)

