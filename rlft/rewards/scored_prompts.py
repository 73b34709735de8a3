"""Which prompts a configured reward will score, for the rewards that refuse a prompt at
composition (reward=ocr needs quoted text, reward=geneval metadata)."""

from omegaconf import DictConfig


def scored_splits(cfg: DictConfig, where: str) -> dict[str, list[str]]:
    """{split: prompts} that the reward at `where` scores: a held-out reward (under `evaluation.`)
    the evaluation's prompts; the trained reward (or a component of it) training's and evaluation's.
    Empty when the model config names no prompts."""
    if "prompts" not in cfg.get("model", {}):
        return {}
    splits = ("eval",) if where.startswith("evaluation.") else ("train", "eval")
    return {split: list(cfg.model.prompts[split]) for split in splits}
