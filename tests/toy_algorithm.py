"""An algorithm added as a user would add one: this module (a loss on the shared pipeline and the
checks of its one setting), named on the command line (`algorithm._target_=tests.toy_algorithm.Toy`,
`+algorithm.toy_weight=...`). Used by tests/test_architecture.py."""

import torch
from omegaconf import DictConfig

from rlft.algorithms.pipeline import MicroBatch, OnlineRL
from rlft.checks import check


class Toy(OnlineRL):
    """REINFORCE with the loss scaled by `toy_weight`."""

    @classmethod
    def check_config(cls, cfg: DictConfig, node: DictConfig, where: str) -> None:
        super().check_config(cfg, node, where)
        check(cfg.algorithm.toy_weight > 0, "algorithm.toy_weight", cfg.algorithm.toy_weight, "must be > 0 (the toy's scale)")

    def __init__(self, toy_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.toy_weight = toy_weight

    def loss(self, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        log_prob = self.policy.log_prob(mb.latents, mb.next_latents, mb.timesteps, mb.embeds)
        return -self.toy_weight * (mb.advantages * log_prob).mean(), {"toy_log_prob": log_prob.detach().mean()}
