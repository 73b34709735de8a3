"""The shipped GenEval prompt sets (`${prompt_set:geneval_eval}`, `${prompt_set:geneval_train}`), each
a JSON-lines file of GenEval metadata (`tag`, `include`, `exclude`, `prompt`) that reward=geneval
judges the images by.

- `geneval_eval`: GenEval's benchmark suite, made by GenEval's own recipe
  (`prompts/create_prompts.py`: numpy's `default_rng(43)`, 100 draws per task, duplicates
  dropped): 553 prompts, 80 single objects, 99 two objects, 80 counting, 94 colours, 100
  positions, 100 colour attributions; the tests check the counts and the first prompts against
  GenEval's published file.
- `geneval_train`: the same templates drawn with another seed (0, 250 per task), every prompt of
  the benchmark left out (so no single-object prompt: GenEval's suite has all 80).

    python -m rlft.prompts.geneval     # rewrites both files
"""

import json
from pathlib import Path

import numpy as np

from rlft.rewards.geneval_rules import CLASSNAMES, COLORS, POSITIONS

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PERSON = CLASSNAMES.index("person")  # no "a red person": colour prompts skip it


def with_article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def plural(name: str) -> str:
    return f"{name}es" if name.endswith("s") else f"{name}s"


def single_objects(rng: np.random.Generator) -> list[dict]:
    return [{"tag": "single_object", "include": [{"class": CLASSNAMES[i], "count": 1}],
             "prompt": f"a photo of {with_article(CLASSNAMES[i])}"}
            for i in rng.choice(len(CLASSNAMES), size=len(CLASSNAMES), replace=False)]


def two_objects(rng: np.random.Generator) -> dict:
    a, b = (CLASSNAMES[i] for i in rng.choice(len(CLASSNAMES), size=2, replace=False))
    return {"tag": "two_object", "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {with_article(a)} and {with_article(b)}"}


def counting(rng: np.random.Generator, max_count: int = 4) -> dict:
    name = CLASSNAMES[rng.choice(len(CLASSNAMES))]
    n = int(rng.integers(2, max_count, endpoint=True))
    return {"tag": "counting", "include": [{"class": name, "count": n}], "exclude": [{"class": name, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {plural(name)}"}


def colors(rng: np.random.Generator) -> dict:
    name = CLASSNAMES[(rng.choice(len(CLASSNAMES) - 1) + 1 + PERSON) % len(CLASSNAMES)]
    color = COLORS[rng.choice(len(COLORS))]
    return {"tag": "colors", "include": [{"class": name, "count": 1, "color": color}],
            "prompt": f"a photo of {with_article(color)} {name}"}


def position(rng: np.random.Generator) -> dict:
    a, b = (CLASSNAMES[i] for i in rng.choice(len(CLASSNAMES), size=2, replace=False))
    relation = POSITIONS[rng.choice(len(POSITIONS))]
    return {"tag": "position", "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of {with_article(a)} {relation} {with_article(b)}"}


def color_attribution(rng: np.random.Generator) -> dict:
    a, b = ((i + 1 + PERSON) % len(CLASSNAMES) for i in rng.choice(len(CLASSNAMES) - 1, size=2, replace=False))
    color_a, color_b = (COLORS[i] for i in rng.choice(len(COLORS), size=2, replace=False))
    return {"tag": "color_attr",
            "include": [{"class": CLASSNAMES[a], "count": 1, "color": color_a},
                        {"class": CLASSNAMES[b], "count": 1, "color": color_b}],
            "prompt": f"a photo of {with_article(color_a)} {CLASSNAMES[a]} and {with_article(color_b)} {CLASSNAMES[b]}"}


def suite(seed: int = 43, per_task: int = 100) -> list[dict]:
    """GenEval's recipe: every single object, then `per_task` draws of each other task in turn
    (the same order of random draws as GenEval's generator), duplicates dropped."""
    rng = np.random.default_rng(seed)
    samples = single_objects(rng)
    for make in (two_objects, counting, colors, position, color_attribution):
        samples += [make(rng) for _ in range(per_task)]
    unique, seen = [], set()
    for sample in samples:
        key = json.dumps(sample, sort_keys=True)
        if key not in seen:
            unique.append(sample)
            seen.add(key)
    return unique


def train_and_eval() -> tuple[list[dict], list[dict]]:
    evaluation = suite(43, 100)
    held_out = {s["prompt"] for s in evaluation}
    seen, train = set(), []
    for sample in suite(0, 250):
        if sample["prompt"] not in held_out and sample["prompt"] not in seen:
            train.append(sample)
            seen.add(sample["prompt"])
    return train, evaluation


def write(directory: Path = Path(__file__).parent) -> None:
    train, evaluation = train_and_eval()
    for name, samples in (("geneval_train", train), ("geneval_eval", evaluation)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


if __name__ == "__main__":
    write()
