"""`rlft benchmark [ckpt_path=RUN/checkpoints/last.ckpt] reward=... [overrides]`: the numbers a paper
reports, for the base model or a trained run.

Every evaluation prompt (`model.prompts.eval`) is drawn `benchmark.per_prompt` times, each sample
from its own seeded noise (`benchmark.seed`, the prompt's and the sample's index: the same images
whatever the batch size, up to the rounding of batched arithmetic), and scored by the reward and by each of `evaluation.rewards`. Each sample's
scores go to `benchmark.out` (JSON lines; by default into the scored run's directory, see
`output_path`), the table to the console and to `<out>.summary.json`, with what was scored (the
checkpoint, its epoch and step, the overrides; the whole config in `<out>.config.yaml`):
per reward, the mean over the samples with its standard error and the count of non-finite scores
(left out of the mean, never counted as 0); for a reward that sorts its prompts into groups
(GenEval's six tasks), each group's mean and the mean over the groups, which is GenEval's overall
score (`reward=geneval reward.score=correct model.prompts.eval='${prompt_set:geneval_eval}'`,
`benchmark.per_prompt=4` as GenEval's own protocol).

It composes the same config as `python -m rlft`: pass the run's model and policy overrides.
"""

import json
import math
from collections import defaultdict
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rlft.diffusion.noise import stream_generator
from rlft.rewards import frames
from rlft.checks import ConfigError, check_node
from rlft.rewards.multi import component_configs
from rlft.run.config import CONFIG_DIR, check_config_dir
from rlft.run.errors import one_line_errors
from rlft.run.weights import check_weights
from rlft.tools.sample import load_policy


def summarize(scores: list[float], groups: list[str] | None = None) -> dict:
    """Mean, standard error and count of the finite scores; with `groups`, each group's mean and
    the mean of the groups' means."""
    finite = [s for s in scores if math.isfinite(s)]
    n = len(finite)
    mean = sum(finite) / n if n else math.nan
    sem = (sum((s - mean) ** 2 for s in finite) / (n - 1) / n) ** 0.5 if n > 1 else math.nan
    out = {"mean": mean, "sem": sem, "n": n, "nonfinite": len(scores) - n}
    if groups is not None:
        by_group = defaultdict(list)
        for score, group in zip(scores, groups):
            if math.isfinite(score):
                by_group[group].append(score)
        out["groups"] = {g: sum(v) / len(v) for g, v in sorted(by_group.items())}
        out["mean_over_groups"] = sum(out["groups"].values()) / len(out["groups"]) if out["groups"] else math.nan
    return out


def output_path(out: str | None, ckpt_path: str | None, reward: str | None, overwrite: bool) -> Path:
    """Where the scores go: `benchmark.out` when given; else, for a run's checkpoint
    (RUN/checkpoints/NAME.ckpt), RUN/benchmark/<reward option>_<NAME>.jsonl, and for the base model
    outputs/benchmark/base/<reward option>.jsonl. An existing file is refused, never overwritten
    silently (`benchmark.overwrite=true` replaces it)."""
    label = reward or "reward"
    if out is not None:
        path = Path(out)
    elif ckpt_path:
        ckpt = Path(ckpt_path)
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        path = run / "benchmark" / f"{label}_{ckpt.stem}.jsonl"
    else:
        path = Path("outputs/benchmark/base") / f"{label}.jsonl"
    if path.exists() and not overwrite:
        raise ConfigError(f"benchmark.out={path} exists: set another benchmark.out, or benchmark.overwrite=true to replace it")
    return path


def benchmark(cfg: DictConfig) -> dict:
    rewards = {"reward": cfg.reward}
    held_out = list(cfg.evaluation.get("rewards") or [])
    rewards |= dict(component_configs(held_out, cfg.evaluation.get("settings") or {}, CONFIG_DIR))
    for name, node in rewards.items():  # before any sampling (a reward=geneval without a prompt's metadata)
        check_node(cfg, node, name if name == "reward" else f"evaluation.settings.{name}")
    b = cfg.benchmark
    out = output_path(b.out, cfg.ckpt_path, trained_reward_option(), b.overwrite)  # refused before any work
    scored = {"checkpoint": str(Path(cfg.ckpt_path).resolve()) if cfg.ckpt_path else None}
    check_weights(cfg)  # the rewards' hub ids, before the model loads
    policy = load_policy(cfg, cfg.ckpt_path, scored)
    scorers = {name: instantiate(node) for name, node in rewards.items()}
    jobs = [(p, i) for p in range(len(cfg.model.prompts.eval)) for i in range(b.per_prompt)]
    prompts = [cfg.model.prompts.eval[p] for p, _ in jobs]
    scores = {name: [] for name in scorers}
    with torch.no_grad():
        for start in tqdm(range(0, len(jobs), b.batch_size), desc="benchmark", unit="batch"):
            chunk = jobs[start:start + b.batch_size]
            batch = prompts[start:start + b.batch_size]
            generators = [stream_generator(b.seed, "benchmark", p, i) for p, i in chunk]
            images = policy.sample(batch, generator=generators).images
            for name, scorer in scorers.items():
                scores[name] += frames.score(scorer, images, batch).tolist()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for k, ((p, i), prompt) in enumerate(zip(jobs, prompts)):
            f.write(json.dumps({"prompt": prompt, "sample": i, **{n: s[k] for n, s in scores.items()}}) + "\n")
    summary = {}
    for name, scorer in scorers.items():
        group_of = getattr(scorer, "group_of", None)
        summary[name] = summarize(scores[name], [group_of(p) for p in prompts] if group_of else None)
    scored |= {"overrides": task_overrides(), "config": f"{out.name}.config.yaml"}
    Path(f"{out}.summary.json").write_text(json.dumps({"scored": scored, **summary}, indent=2))
    Path(f"{out}.config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    print(format_table(summary, len(cfg.model.prompts.eval), b.per_prompt, trained_reward_option()))
    print(f"wrote {len(jobs)} samples' scores to {out}, the table to {out}.summary.json and the config to {out}.config.yaml")
    return summary


def task_overrides() -> list[str]:
    """The command line's overrides, when Hydra knows them."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def trained_reward_option() -> str | None:
    """The reward= option this run composed (its label in the table), when Hydra knows it."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("reward") if HydraConfig.initialized() else None


def format_table(summary: dict, prompts: int, per_prompt: int, option: str | None = None) -> str:
    lines = [f"{prompts} prompts x {per_prompt} samples", f"{'reward':<24}{'mean':>10}{'± sem':>10}{'n':>7}{'non-finite':>12}"]
    for name, s in summary.items():
        label = f"reward={option}" if name == "reward" and option else name
        lines.append(f"{label:<24}{s['mean']:>10.4f}{s['sem']:>10.4f}{s['n']:>7}{s['nonfinite']:>12}")
        for group, mean in s.get("groups", {}).items():
            lines.append(f"  {group:<22}{mean:>10.4f}")
        if "groups" in s:
            lines.append(f"  {'mean over groups':<22}{s['mean_over_groups']:>10.4f}")
    return "\n".join(lines)


@hydra.main(config_path=CONFIG_DIR, config_name="benchmark", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with one_line_errors():
        benchmark(cfg)


check_config_dir()

if __name__ == "__main__":
    main()
