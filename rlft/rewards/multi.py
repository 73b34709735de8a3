"""`reward=multi`: several rewards at once, each a component with a weight.

    reward.components: {pickscore: 1.0, ocr: 0.5}    # each name an option of conf/reward/

`combine=sum` trains on the weighted sum of the components' rewards (flow_grpo, verl-omni);
`combine=advantages` normalises each component into advantages on its own (per group for
GRPO, per prompt or per batch for DDPO) and trains on their weighted sum (DanceGRPO,
Flow-Factory's `gdpo`), so that a component with a large scale cannot drown the others.

Each component's answers are kept in the answer store under their own key, and each is
logged as `reward/<name>` and `eval/<name>`. A non-finite answer is that component's: under
`advantages` the other components still give the sample an advantage; under `sum` the sum is
not finite, and the sample gets none.
"""

import math
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from rlft.assets import CONFIG_DIR
from rlft.checks import algorithm_class, as_config_error, check, check_node

COMBINES = ("sum", "advantages")


def reward_options(config_dir: str) -> list[str]:
    return sorted(p.stem for p in (Path(config_dir) / "reward").glob("*.yaml"))


def single_reward_options(config_dir: str) -> list[str]:
    """The options that can be a component or a held-out reward: not multi, not a learned reward."""
    return [o for o in reward_options(config_dir) if o not in ("multi", "ensemble")]


def check_components(components, config_dir: str, setting: str = "reward.components") -> None:
    """Raises ValueError naming the first bad name or weight (run at composition)."""
    options = single_reward_options(config_dir)
    if not components:
        raise ValueError(f"{setting} is empty: give at least one component, e.g. {setting}={{compressibility:1.0}}; "
                         f"components: {options}")
    for name, weight in components.items():
        if name not in options:
            raise ValueError(f"{setting}.{name} is invalid: {name!r} is no reward option; valid: {options}")
        if not (isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight) and weight > 0):
            raise ValueError(f"{setting}.{name}={weight!r} is invalid: a weight must be a finite number > 0")


def component_configs(names, settings, config_dir: str) -> DictConfig:
    """The resolver behind `reward.rewards`: each named option of conf/reward/, with
    `settings.<name>` merged over it (e.g. `+reward.settings.pickscore.model_path=DIR`)."""
    names = list(names.keys() if isinstance(names, (dict, DictConfig)) else names)
    settings = settings or {}
    unknown = sorted(set(settings) - set(names))
    if unknown:
        raise ValueError(f"settings for {unknown}, which are not among the rewards {names}")
    loaded = {}
    for name in names:
        path = Path(config_dir) / "reward" / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"{name!r} is no reward option; valid: {reward_options(config_dir)}")
        loaded[name] = OmegaConf.merge(OmegaConf.load(path), settings.get(name, {}))
    return OmegaConf.create(loaded)


def trained_components(reward_cfg) -> list[str]:
    """The names of reward=multi's components (the rewards trained on), else none."""
    return list(reward_cfg.components) if reward_cfg.get("_target_") == f"{__name__}.MultiReward" else []


class MultiReward:
    """(images, prompts) -> the weighted sum (B,); `parts` and `combine_parts` give the
    pipeline the components, which it asks one by one through the answer store."""

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        """Known names, weights > 0, settings only for named rewards; then each component's own checks."""
        with as_config_error():
            check_components(node.components, CONFIG_DIR)
        check(node.combine in COMBINES, "reward.combine", node.combine, f"must be one of {list(COMBINES)}")
        trained = list(node.components)
        stray = sorted(set(node.get("settings") or {}) - set(trained))
        check(not stray, "reward.settings", stray, f"names rewards that are no component; the components: {trained}")
        check(not (algorithm_class(cfg).learns_own_reward and node.combine == "advantages"), "reward.combine",
              node.combine, "with algorithm=seiko: SEIKO fits one reward model to the oracle's answers, so it needs one "
              "reward per sample; use reward.combine=sum")
        for name, component in node.rewards.items():
            check_node(cfg, component, f"{where}.rewards.{name}")

    def __init__(self, components: dict[str, float], rewards: dict[str, Callable], combine: str = "sum",
                 settings: dict | None = None):
        if combine not in COMBINES:
            raise ValueError(f"reward.combine={combine!r} is invalid: must be one of {list(COMBINES)}")
        if set(components) != set(rewards):
            raise ValueError(f"reward.components {sorted(components)} and reward.rewards {sorted(rewards)} differ")
        self.names = list(components)
        self.weights = torch.tensor([float(components[n]) for n in self.names])
        self.rewards = {n: rewards[n] for n in self.names}
        self.combine = combine

    def combine_parts(self, parts: torch.Tensor) -> torch.Tensor:
        """(B, K) components -> (B,) their weighted sum (not finite where a component is not)."""
        return parts.float() @ self.weights

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        parts = [torch.as_tensor(self.rewards[n](images, prompts)).float().cpu() for n in self.names]
        return self.combine_parts(torch.stack(parts, dim=1))
