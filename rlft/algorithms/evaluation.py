"""Held-out evaluation shared by the algorithms: `eval/oracle_reward`, and `eval/<name>` for
each component of reward=multi and each held-out reward (`evaluation.rewards`)."""

from typing import Callable

import lightning as L
import torch

from rlft.algorithms.scored_sampling import sample_and_score
from rlft.run.answers import AnswerStore
from rlft.diffusion.noise import sample_generators
from rlft.diffusion.policy import DiffusionPolicy
from rlft.assets import CONFIG_DIR
from rlft.checks import check, check_node
from rlft.rewards.multi import component_configs, single_reward_options, trained_components
from rlft.rewards.scorer import Scorer
from rlft.run.distributed import gather, rank_and_world, shard


def training_work(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None") -> int:
    """UNet sample-evaluations of this process's training so far: sampling, updates and
    queries, evaluation excluded (work/unet_evals)."""
    return policy.unet_evaluations - (evaluation.unet_evaluations if evaluation is not None else 0)


def work_state(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None") -> dict[str, int]:
    return {"policy": policy.unet_evaluations, "evaluation": evaluation.unet_evaluations if evaluation else 0}


def load_work_state(policy: DiffusionPolicy, evaluation: "HeldOutEvaluation | None", state: dict | None) -> None:
    if state:
        policy.unet_evaluations = state["policy"]
        if evaluation is not None:
            evaluation.unet_evaluations = state["evaluation"]


class HeldOutEvaluation:
    """Samples `samples_per_prompt` images per held-out prompt and scores them with a reward
    instance of its own (measurement only: never fed back, never counted as a query).

    Sample i's noise is the same in every evaluation (common random numbers, from `seed`
    and i): evaluations differ only through the policy, and training's random stream is
    untouched. Under DDP each rank evaluates its shard; the mean is over all samples.

    `held_out`: rewards that are not trained on, scored on the same samples and logged as
    `eval/<name>`: reward hacking shows as the trained reward rising while these fall.
    """

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        """The held-out rewards (`evaluation.rewards`, `evaluation.settings`): known names, none trained
        on, none twice, settings only for held-out ones; then each one's own checks."""
        e = cfg.get("evaluation", {})
        held_out = list(e.get("rewards") or [])
        trained = trained_components(cfg.get("reward", {}))
        options = single_reward_options(CONFIG_DIR)
        for name in held_out:
            check(name in options, "evaluation.rewards", held_out, f"{name!r} is no reward option; valid: {options}")
            check(name not in trained, "evaluation.rewards", held_out,
                  f"{name} is a component of reward=multi, trained on and logged as eval/{name} already; a held-out reward is one the policy does not see")
        check(len(set(held_out)) == len(held_out), "evaluation.rewards", held_out, "names a reward twice")
        stray = sorted(set(e.get("settings") or {}) - set(held_out))
        check(not stray, "evaluation.settings", stray, f"names rewards that are not held out; evaluation.rewards: {held_out}")
        for name, reward in component_configs(held_out, e.get("settings") or {}, CONFIG_DIR).items():
            check_node(cfg, reward, f"evaluation.settings.{name}")

    def __init__(self, reward_fn: Callable, samples_per_prompt: int = 4, seed: int = 2024, batch_size: int = 64,
                 held_out: dict[str, Callable] | None = None):
        self.reward_fn = reward_fn
        self.scorer = Scorer(reward_fn)
        self.held_out = dict(held_out or {})
        clash = sorted(set(self.held_out) & set(self.scorer.components))
        if clash:
            raise ValueError(f"evaluation.rewards {clash} are trained on (components of reward=multi): a held-out "
                             f"reward is one the policy does not see; each component is logged as eval/<name> already")
        self.samples_per_prompt = samples_per_prompt
        self.seed = seed
        self.batch_size = batch_size
        self.unet_evaluations = 0  # the policy's work spent here, kept out of the run's training work

    @torch.no_grad()
    def __call__(self, policy: DiffusionPolicy, prompts: list[str], progress: bool = False, trainer: L.Trainer | None = None,
                 answers: AnswerStore | None = None, key: str = "eval"):
        """-> ({eval/oracle_reward: the trained reward's mean over all samples, eval/<name>: each
        component's and held-out reward's}, and this rank's images, prompts, trained rewards).
        `answers`/`key`: where the rewards' answers are kept (a resumed run reads them back)."""
        rank, world = rank_and_world(trainer)
        everything = [p for p in prompts for _ in range(self.samples_per_prompt)]
        mine = shard(len(everything), rank, world)
        prompts = everything[mine.start : mine.stop]
        noise = sample_generators(self.seed, "eval", 0, mine, policy.device)
        before = policy.unet_evaluations
        answers = answers or AnswerStore()
        # Each chunk decoded and scored while the next samples: the pass costs its sampling, not more.
        trajectories, asked = sample_and_score(policy, prompts, self.batch_size, noise, lambda part, chunk: self.ask(
            answers, f"{key}/samples={mine.start + chunk.start}-{mine.start + chunk.stop}", part.images, part.prompts),
            progress=progress, desc="evaluating", keep_trajectories=False,
            store=lambda part, chunk: part.store("cpu"))  # scored: its images wait for the sample grid in host memory
        self.unet_evaluations += policy.unet_evaluations - before
        parts = torch.cat(asked)  # (B, K): the trained reward (or each component), then the held-out ones
        components = self.scorer.components
        trained = self.scorer.combine(parts[:, : max(1, len(components))])
        names = [*components, *self.held_out]
        scored = parts if components else parts[:, 1:]  # every column but the single trained reward's
        every = gather(torch.cat([trained[:, None], scored], dim=1), world)
        metrics = {f"eval/{name}": mean_of_finite(every[:, i]) for i, name in enumerate(["oracle_reward", *names])}
        return metrics, trajectories.images, prompts, trained

    def ask(self, answers: AnswerStore, key: str, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """-> (b, K): the trained reward (at `key`, or each component at `key/<name>`), then each held-out reward."""
        trained = self.scorer.ask(answers, key, images, prompts)
        if not self.held_out:
            return trained
        return torch.cat([trained, answers.ask_each(key, images, prompts, self.held_out)], dim=1)


def mean_of_finite(values: torch.Tensor) -> float:
    """A NaN here is counted by nobody: measure what is there (NaN when nothing is)."""
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")
