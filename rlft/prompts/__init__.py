"""Prompt sets shipped with the package, one prompt per line (`${prompts:NAME}` in configs).

- `imagenet_animals`: the 398 animal classes of ImageNet-1k (classes 0-397), as DDPO's
  aesthetic and compressibility experiments use; class names from timm's ImageNet lemma list.
- `simple_animals`: 45 common animals, as DDPO's prompt-alignment experiments use.
- `ocr_signs`, `ocr_signs_eval`: texts to render, in double quotes, for reward=ocr (written by
  `rlft.prompts.ocr`).

A path to a text file (`${prompt_set:/data/flow_grpo/dataset/pickscore/train.txt}`) reads that
file the same way: the prompt lists of the public repositories are such files.
"""

from pathlib import Path


def prompt_set(name: str) -> list[str]:
    path = Path(name) if name.endswith(".txt") else Path(__file__).parent / f"{name}.txt"
    if name.endswith(".txt") and not path.is_file():
        raise FileNotFoundError(f"no prompt file {name!r} (a text file, one prompt per line)")
    if not path.is_file():
        available = sorted(p.stem for p in Path(__file__).parent.glob("*.txt"))
        raise FileNotFoundError(f"no prompt set {name!r}; the package ships {available}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
