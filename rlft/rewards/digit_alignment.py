"""Prompt alignment for the embedded model: log p(prompted digit | image) under the
project's own digit classifier (weights shipped in rlft/assets/digit_classifier)."""

import torch

from rlft.data.digits import label_of_prompt
from rlft.models.digits import DigitClassifier


class DigitAlignment:
    def __init__(self, classifier_path: str):
        self.classifier = DigitClassifier.from_pretrained(classifier_path).eval().requires_grad_(False)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        weight = next(self.classifier.parameters())  # its device and dtype: where the module placed it
        labels = torch.tensor([label_of_prompt(p) for p in prompts], device=weight.device)
        log_probs = self.classifier(images.to(weight.device, weight.dtype)).float().log_softmax(-1)
        return log_probs.gather(1, labels[:, None]).squeeze(1)
