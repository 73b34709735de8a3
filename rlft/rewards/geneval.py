"""reward=geneval: GenEval in-process on current torch, no mmdet, no extra server.

    detections = Mask2Former (COCO instance segmentation, Swin-S: the architecture GenEval uses),
                 through transformers' port, post-processed as mmdet's Mask2Former does
    colours    = CLIP ViT-L/14 zero-shot over GenEval's 10 colours, on each object's masked crop
    reward     = GenEval's rules on them (`rlft.rewards.geneval_rules`): `partial` (the training
                 reward of flow_grpo and DiffusionNFT), `strict`, or `correct` (the benchmark's)

The prompt's metadata (`tag`, `include`, `exclude`) is looked up by the prompt's text in GenEval
metadata files (JSON lines, GenEval's own format): by default the sets rlft ships
(`rlft/prompts/geneval_*.jsonl`), or `reward.metadata=[PATH.jsonl, ...]` (e.g. flow_grpo's
`dataset/geneval/train_metadata.jsonl`); a prompt found in none is refused at composition.

Why the post-processing is written here and not taken from transformers: its
`post_process_instance_segmentation` resizes every mask to a fixed 384 x 384 and binarises before
upsampling, whereas mmdet (what GenEval's numbers come from) upsamples the mask logits to the
padded input, crops the padding, resizes to the image's size, then thresholds at 0; the boxes are
the masks' extents (mmdet's `mask2bbox`).
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoProcessor, Mask2FormerForUniversalSegmentation
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from rlft.checks import ConfigError, check
from rlft.rewards.aesthetic import shared_clip
from rlft.rewards.clip_similarity import to_pil
from rlft.rewards.scored_prompts import scored_splits
from rlft.rewards.geneval_rules import (CLASSNAMES, COLORS, SCORES, Detection, correct, keep_confident, load_metadata,
                                        metadata_of, partial_and_strict)

COLOR_TEMPLATES = ("a photo of a {c} {name}", "a photo of a {c}-colored {name}", "a photo of a {c} object")


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) x1, y1, x2, y2: the masks' extents, x2/y2 one past the last pixel
    (mmdet's `mask2bbox`); zeros for an empty mask."""
    boxes = torch.zeros(masks.shape[0], 4)
    for i, mask in enumerate(masks):
        xs, ys = torch.where(mask.any(0))[0], torch.where(mask.any(1))[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instance_detections(class_logits: torch.Tensor, mask_logits: torch.Tensor, padded: tuple[int, int],
                        resized: tuple[int, int], size: tuple[int, int], max_per_image: int = 100,
                        min_score: float = float("-inf")) -> list[dict]:
    """One image's Mask2Former outputs -> instances as mmdet's `instance_postprocess` returns them:
    the top `max_per_image` (query, class) pairs by class probability, each scored by its class
    probability times its mask's mean foreground probability.

    class_logits (Q, C + 1), mask_logits (Q, h, w); `padded` the model input's size, `resized`
    the image's size inside it, `size` the original image's (H, W). Instances scoring `min_score`
    or less are left out (every threshold would drop them; their masks are not copied)."""
    masks = F.interpolate(mask_logits[None].float(), size=padded, mode="bilinear", align_corners=False)[0]
    masks = masks[:, :resized[0], :resized[1]]
    masks = F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]
    probabilities = class_logits.float().softmax(-1)[:, :-1]
    classes = probabilities.shape[1]
    top, index = probabilities.flatten().topk(min(max_per_image, probabilities.numel()), sorted=False)
    labels, queries = index % classes, index // classes
    masks = masks[queries]
    binary = masks > 0
    mask_score = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    scores, boxes = top * mask_score, mask_boxes(binary)
    return [{"label": int(l), "score": float(s), "box": tuple(b.tolist()), "mask": m.numpy()}
            for l, s, b, m in zip(labels, scores, boxes, binary) if s > min_score]


class Mask2FormerDetector:
    """Images -> per COCO class name, its instances (`Detection`s, any confidence)."""

    def __init__(self, path: str, dtype: str = "float32", size: Sequence[int] | None = (800, 1333)):
        # mmdet's test input for GenEval's detector: shortest side 800, longest at most 1333 (the hub
        # processor's own size may be smaller); None keeps the processor's.
        sizes = {"size": {"shortest_edge": size[0], "longest_edge": size[1]}} if size else {}
        self.processor = Mask2FormerImageProcessorPil.from_pretrained(path, **sizes)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
        labels = self.model.config.num_labels
        if labels != len(CLASSNAMES):
            raise ValueError(f"reward.detector_path={path!r} predicts {labels} classes; GenEval needs a COCO instance "
                             f"segmentation model of its {len(CLASSNAMES)} classes (facebook/mask2former-swin-small-coco-instance)")

    @torch.no_grad()
    def __call__(self, image: Image.Image, min_score: float = float("-inf")) -> dict[str, list[Detection]]:
        inputs = self.processor(images=[image], return_tensors="pt")
        pixel_mask = inputs["pixel_mask"][0].bool()
        outputs = self.model(pixel_values=inputs["pixel_values"].to(self.model.device, self.model.dtype),
                             pixel_mask=inputs["pixel_mask"].to(self.model.device))
        resized = (int(pixel_mask.any(1).sum()), int(pixel_mask.any(0).sum()))
        found: dict[str, list[Detection]] = {}
        for d in instance_detections(outputs.class_queries_logits[0].float().cpu(), outputs.masks_queries_logits[0].float().cpu(),
                                     tuple(pixel_mask.shape), resized, (image.height, image.width), min_score=min_score):
            found.setdefault(CLASSNAMES[d["label"]], []).append(Detection(d["box"], d["score"], d["mask"]))
        return found


class ClipColors:
    """GenEval's colour classifier: CLIP zero-shot over COLORS on each object's crop, its pixels
    outside the mask grey (#999), with three templates per colour averaged (clip_benchmark's
    `zero_shot_classifier`: normalised, averaged, normalised again)."""

    def __init__(self, path: str, dtype: str = "float32"):
        self.clip = shared_clip(path, dtype)  # one copy with reward=clipscore's on the same CLIP
        self.processor = AutoProcessor.from_pretrained(path)
        self.classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def classifier(self, name: str) -> torch.Tensor:
        """(D, 10): one unit column per colour for objects of class `name`."""
        if name not in self.classifiers:
            texts = [t.format(c=c, name=name) for c in COLORS for t in COLOR_TEMPLATES]
            inputs = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt",
                                    max_length=self.clip.config.text_config.max_position_embeddings)
            inputs = inputs.to(self.clip.device)
            features = self.clip.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            features = getattr(features, "pooler_output", features)
            per_color = F.normalize(features.float(), dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self.classifiers[name] = F.normalize(per_color, dim=-1).T
        return self.classifiers[name]

    @staticmethod
    def crop(image: Image.Image, detection: Detection) -> Image.Image:
        if detection.mask is not None:
            image = Image.composite(image, Image.new("RGB", image.size, color="#999"), Image.fromarray(detection.mask))
        return image.crop(detection.box[:4])

    @torch.no_grad()
    def __call__(self, image: Image.Image, name: str, detections: Sequence[Detection]) -> list[str]:
        crops = [self.crop(image, d) for d in detections]
        pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.clip.device, self.clip.dtype)
        features = self.clip.get_image_features(pixel_values=pixels)
        features = F.normalize(getattr(features, "pooler_output", features).float(), dim=-1)
        return [COLORS[i] for i in (features @ self.classifier(name).to(features.device)).argmax(1).tolist()]


def check_geneval(cfg, node, where: str, splits: dict[str, list[str]]) -> None:
    """reward=geneval judges each prompt by its GenEval metadata: a prompt it will score without any
    (`splits`: {split: prompts}) is refused before any work."""
    check(node.score in SCORES, f"{where}.score", node.score, f"one of {list(SCORES)}")
    try:
        table = load_metadata(node.metadata)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"{where}.metadata: {error}") from None
    for split, prompts in splits.items():
        for prompt in prompts:
            try:
                metadata_of(table, prompt)
            except ValueError as error:
                raise ConfigError(f"model.prompts.{split}: {error}") from None


class GenEvalReward:
    """(images, prompts) -> GenEval's score per image (B,): `partial` in (-inf, 1] (a count part is
    negative when more than twice the count is found), `strict` and `correct` 0 or 1."""

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        check_geneval(cfg, node, where, scored_splits(cfg, where))

    def __init__(self, detector_path: str, clip_path: str, metadata: Sequence[str] | str | None = None,
                 score: str = "partial", threshold: float = 0.3, counting_threshold: float = 0.9,
                 max_objects: int = 16, position_quirk: bool = True, dtype: str = "float32",
                 detector_size: Sequence[int] | None = (800, 1333)):
        if score not in SCORES:
            raise ValueError(f"reward.score={score!r} is invalid: one of {list(SCORES)}")
        self.metadata = load_metadata(metadata)
        self.detector = Mask2FormerDetector(detector_path, dtype, detector_size)
        self.colors = ClipColors(clip_path, dtype)
        self.score, self.position_quirk = score, position_quirk
        self.keep = dict(threshold=threshold, counting_threshold=counting_threshold, max_objects=max_objects)
        self.min_score = min(threshold, counting_threshold)  # below both: never kept, not even copied

    def group_of(self, prompt: str) -> str:
        """The prompt's GenEval task (its tag): `rlft benchmark` averages within each, then over them."""
        return metadata_of(self.metadata, prompt)["tag"]

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        metadata = [metadata_of(self.metadata, p) for p in prompts]  # before any work: unknown prompts refused
        rewards = []
        for image, meta in zip(to_pil(images), metadata):
            objects = keep_confident(self.detector(image, min_score=self.min_score), meta["tag"], **self.keep)
            colors_of = lambda name, found, image=image: self.colors(image, name, found)  # noqa: E731
            if self.score == "correct":  # only the verdict asked for: each one classifies colours
                rewards.append(float(correct(meta, objects, colors_of)))
            else:
                partial, strict = partial_and_strict(meta, objects, colors_of, self.position_quirk)
                rewards.append(partial if self.score == "partial" else float(strict))
        return torch.tensor(rewards, dtype=torch.float32)
