"""Prompt sets shipped with the package, one prompt per line (`${prompts:NAME}` in configs).

- `imagenet_animals`: the 398 animal classes of ImageNet-1k (classes 0-397), as DDPO's
  aesthetic and compressibility experiments use; class names from timm's ImageNet lemma list.
- `simple_animals`: 45 common animals, as DDPO's prompt-alignment experiments use.
- `ocr_signs`, `ocr_signs_eval`: texts to render, in double quotes, for reward=ocr (written by
  `rlft.prompts.ocr`).
- `geneval_train`, `geneval_eval`: GenEval metadata (JSON lines, a `prompt` each) for
  reward=geneval (written by `rlft.prompts.geneval`; `geneval_eval` is GenEval's benchmark suite).

A path to a text file (`${prompt_set:/data/flow_grpo/dataset/pickscore/train.txt}`) reads that
file the same way: the prompt lists of the public repositories are such files. A `.jsonl` file
(GenEval's metadata, e.g. flow_grpo's `dataset/geneval/train_metadata.jsonl`) gives each line's
`prompt`.
"""

import json
from pathlib import Path

SUFFIXES = (".txt", ".jsonl")


def prompt_set(name: str) -> list[str]:
    if name.endswith(SUFFIXES):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no prompt file {name!r} (a text file, one prompt per line, or GenEval's JSON "
                                    f"lines with a 'prompt' each)")
    else:
        shipped = [p for p in (Path(__file__).parent / f"{name}{s}" for s in SUFFIXES) if p.is_file()]
        if not shipped:
            available = sorted(p.stem for s in SUFFIXES for p in Path(__file__).parent.glob(f"*{s}"))
            raise FileNotFoundError(f"no prompt set {name!r}; the package ships {available}")
        path = shipped[0]
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line)["prompt"] for line in lines] if path.suffix == ".jsonl" else lines
