"""Prompt sets shipped with the package, one prompt per line (`${prompts:NAME}` in configs).

- `imagenet_animals`: the 398 animal classes of ImageNet-1k (classes 0-397), as DDPO's
  aesthetic and compressibility experiments use; class names from timm's ImageNet lemma list.
- `simple_animals`: 45 common animals, as DDPO's prompt-alignment experiments use.
"""

from pathlib import Path


def prompt_set(name: str) -> list[str]:
    path = Path(__file__).parent / f"{name}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in Path(__file__).parent.glob("*.txt"))
        raise FileNotFoundError(f"no prompt set {name!r}; the package ships {available}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
