"""`reward=ensemble`: a learned reward for any sampling-based algorithm (PPO, GRPO, ...).

SEIKO's reward model (the `ensemble` group: bootstrap heads, independent members or
SEIKO-UCB), aggregated by the `aggregation` group, is fitted on `queries` answers of the
oracle about fresh samples of the current policy: before the first epoch, and again every
`refresh_every_n_epochs` epochs on all the feedback so far (0: fitted once). The policy then
optimises the model's prediction (the proxy); the oracle is asked nothing else, and is
measured on held-out prompts only (`eval/oracle_reward`, beside `eval/proxy_reward`). This is
the setting in which users over-optimise an imperfect reward; the ensemble's disagreement on
the policy's own samples (`proxy/disagreement`) and pessimistic aggregations (`lcb`, `min`)
are the tools against it. The pipeline (rlft.algorithms.pipeline) asks and fits; this class
holds the feedback and the model, and answers like any reward: (images, prompts) -> (B,).
"""

from typing import Callable

import torch

from rlft.checks import algorithm_class, as_config_error, check
from rlft.run.distributed import world_size
from rlft.ensemble.fit import fit_reward_model, validation_split
from rlft.ensemble.reward_ensemble import RewardEnsemble


def check_settings(queries: int, val_fraction: float, refresh_every_n_epochs: int, epochs: int | None = None) -> None:
    """Raises ValueError naming the first bad setting (also run at composition: `LearnedReward.check_config`)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"reward.val_fraction={val_fraction!r} is invalid: must be in (0, 1)")
    held_out = validation_split(queries, val_fraction) if isinstance(queries, int) else 0
    if not (isinstance(queries, int) and queries - held_out >= 1):
        raise ValueError(
            f"reward.queries={queries!r} is invalid: with reward.val_fraction={val_fraction} it leaves {held_out} "
            f"answer(s) for validation (at least 1) and none to fit on; give at least 2 (oracle answers per fit)")
    if not (isinstance(refresh_every_n_epochs, int) and refresh_every_n_epochs >= 0):
        raise ValueError(f"reward.refresh_every_n_epochs={refresh_every_n_epochs!r} is invalid: must be an "
                         f"integer >= 0 (0: fitted once, before the first epoch)")
    if epochs is not None and refresh_every_n_epochs >= epochs > 0:
        raise ValueError(
            f"reward.refresh_every_n_epochs={refresh_every_n_epochs} is invalid: the run has {epochs} epochs, so it "
            f"would never refit; use a period < {epochs}, or 0 to fit once")


class LearnedReward:
    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        a = cfg.algorithm
        check(not algorithm_class(cfg).learns_own_reward, "reward", "ensemble",
              f"with algorithm={a.name}: reward=ensemble is a learned reward for the sampling-based algorithms (ppo, "
              f"grpo, ddpo_sf, rwr, nft), and algorithm={a.name} fits its own reward model on the oracle: give it the "
              f"oracle (e.g. reward=compressibility)")
        check((world_size(cfg.trainer) or 1) == 1, "trainer.devices", cfg.trainer.get("devices"),
              "must be 1 with reward=ensemble (the learned reward's fit is not shared across processes yet)")
        with as_config_error():
            check_settings(node.queries, node.val_fraction, node.refresh_every_n_epochs, cfg.trainer.max_epochs)

    def __init__(self, oracle: Callable, model: RewardEnsemble, aggregation: Callable, queries: int = 256,
                 refresh_every_n_epochs: int = 0, fit_epochs: int = 100, fit_batch_size: int = 64,
                 val_fraction: float = 0.1):
        check_settings(queries, val_fraction, refresh_every_n_epochs)
        self.oracle, self.model, self.aggregation = oracle, model.requires_grad_(False), aggregation
        self.queries, self.refresh_every_n_epochs = queries, refresh_every_n_epochs
        self.fit_epochs, self.fit_batch_size, self.val_fraction = fit_epochs, fit_batch_size, val_fraction
        self.features: torch.Tensor | None = None  # (N, ...) the feedback so far
        self.rewards: torch.Tensor | None = None  # (N,)
        self.fitted_epochs: list[int] = []

    def due(self, epoch: int) -> bool:
        """Whether the pipeline must query and fit before `epoch` (at most once per epoch)."""
        period = self.refresh_every_n_epochs
        return (epoch == 0 or (period > 0 and epoch % period == 0)) and epoch not in self.fitted_epochs

    def fit(self, epoch: int, features: torch.Tensor, rewards: torch.Tensor, accelerator="cpu") -> dict[str, float]:
        """Adds the oracle's finite answers to the feedback and refits the model on all of it."""
        valid = torch.isfinite(rewards)
        features, rewards = features[valid].cpu(), rewards[valid].cpu()
        self.features = features if self.features is None else torch.cat([self.features, features])
        self.rewards = rewards if self.rewards is None else torch.cat([self.rewards, rewards])
        if len(self.rewards) < 2:
            raise ValueError(f"the oracle gave {len(self.rewards)} finite answers: too few to fit the learned reward")
        # The feedback stays on the CPU (it is checkpointed); the fit's Trainer moves its batches.
        metrics = fit_reward_model(self.model, self.features, self.rewards, self.fit_epochs, self.fit_batch_size,
                                   self.val_fraction, accelerator)
        self.fitted_epochs.append(epoch)
        return metrics

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if not self.fitted_epochs:
            raise RuntimeError("the learned reward was asked before it was fitted (the pipeline fits it before epoch 0)")
        features = self.model.features(images.to(self.model.reward_mean.device))
        return self.model.to_reward_units(self.aggregation(self.model.objective_heads(features))).float().cpu()

    @torch.no_grad()
    def disagreement(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) the model's uncertainty about these images, in reward units (heads' std; UCB's bonus)."""
        return self.model.uncertainty(self.model.features(images.to(self.model.reward_mean.device))).float().cpu()

    def state_dict(self) -> dict:
        trained = {k: v for k, v in self.model.state_dict().items() if k.startswith(self.model.trained_state)}
        return {"model": trained, "features": self.features, "rewards": self.rewards, "fitted_epochs": self.fitted_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"], strict=False)
        self.features, self.rewards, self.fitted_epochs = state["features"], state["rewards"], list(state["fitted_epochs"])
