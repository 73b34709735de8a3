"""`reward=ocr`: does the image show the text the prompt asks for? As Flow-GRPO scores it
(flow_grpo `flow_grpo/ocr.py`):

    target = the text in the prompt's first pair of double quotes
    read   = every recognised line with confidence > 0, joined
    both without spaces, lower-cased
    reward = 1 - min(d, len(target)) / len(target),  d = 0 if target is in read, else Levenshtein(read, target)

Flow-GRPO reads with PaddleOCR (`PaddleOCR(use_angle_cls=False, lang="en").ocr(img, cls=False)`):
DB text detection, each box cropped upright, CTC text recognition. Here the same models run as
transformers' PP-OCRv5 ports (no paddle install), detection and recognition from their own
directories; what their image processors do is written here in torch and OpenCV, because those
processors import torchvision, which does not import beside rlft's CPU torch:
- detection (`PPOCRV5ServerDetImageProcessor`): longest side capped at `limit_side_len` (960),
  both sides rounded to multiples of 32, normalised with Paddle's BGR statistics; the probability
  map thresholded at 0.3, contours to minimum-area boxes scored by their mean probability (kept
  above 0.6), grown by the DB unclip ratio 1.5;
- PaddleOCR's pipeline between the two: boxes sorted top to bottom then left to right, each
  cropped by a perspective warp to an upright rectangle (turned 90 degrees when 1.5 times taller
  than wide), lines below PaddleOCR's `drop_score` 0.5 dropped;
- recognition (`PPOCRV5ServerRecImageProcessor`, PaddleOCR's resize_norm_img): height 48, width
  by the largest width/height ratio among the crops (at least 320), normalised to [-1, 1],
  right-padded; greedy CTC decoding (repeats merged, blank
  index 0) over the processor's `character_list`, the line's confidence the mean of its kept
  characters' probabilities.
Not differentiable in the images (SEIKO's reward backpropagation cannot use it; it takes oracle
answers from any reward).
"""

import json
import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from Levenshtein import distance

from rlft.checks import ConfigError
from rlft.rewards.jpeg import to_pil
from rlft.rewards.scored_prompts import scored_splits


def ocr_target(prompt: str) -> str:
    """The text in the prompt's first pair of double quotes (flow_grpo: `prompt.split('"')[1]`)."""
    parts = prompt.split('"')
    if len(parts) < 3 or not parts[1].replace(" ", ""):
        raise ValueError(f"reward=ocr scores the text in a prompt's first pair of double quotes, and the prompt "
                         f"{prompt!r} has none: write the text to render in quotes, e.g. 'a shop sign that says \"OPEN\"'")
    return parts[1]


def ocr_reward(read: str, target: str) -> float:
    """Flow-GRPO's OCR reward of what was `read` against the `target` text, in [0, 1]."""
    read, target = read.replace(" ", "").lower(), target.replace(" ", "").lower()
    d = 0 if target in read else distance(read, target)
    return 1 - min(d, len(target)) / len(target)


# -- detection ---------------------------------------------------------------------------
DET_MEAN, DET_STD = (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)  # the port's, applied to RGB, then to BGR order


def detection_input(image: np.ndarray, limit_side_len: int = 960) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H', W') as the detection processor makes it."""
    height, width = image.shape[:2]
    ratio = limit_side_len / max(height, width) if max(height, width) > limit_side_len else 1.0
    size = (max(round(int(height * ratio) / 32) * 32, 32), max(round(int(width * ratio) / 32) * 32, 32))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True) / 255
    x = (x - torch.tensor(DET_MEAN).view(1, 3, 1, 1)) / torch.tensor(DET_STD).view(1, 3, 1, 1)
    return x[:, [2, 1, 0]]


def mini_box(contour: np.ndarray) -> tuple[np.ndarray, float]:
    """The minimum-area rectangle of a contour, corners top-left, top-right, bottom-right,
    bottom-left (the port's ordering, ties included), and its short side."""
    rect = cv2.minAreaRect(contour)
    p = sorted(cv2.boxPoints(rect).tolist(), key=lambda point: point[0])
    top_left, bottom_left = (p[0], p[1]) if p[1][1] > p[0][1] else (p[1], p[0])
    top_right, bottom_right = (p[2], p[3]) if p[3][1] > p[2][1] else (p[3], p[2])
    return np.array([top_left, top_right, bottom_right, bottom_left], dtype=np.float32), min(rect[1])


def box_score(probability: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box (polygon), over its axis-aligned bounding rectangle."""
    h, w = probability.shape
    x0, x1 = np.clip([math.floor(box[:, 0].min()), math.ceil(box[:, 0].max())], 0, w - 1)
    y0, y1 = np.clip([math.floor(box[:, 1].min()), math.ceil(box[:, 1].max())], 0, h - 1)
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    cv2.fillPoly(mask, (box - [x0, y0]).reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(probability[y0 : y1 + 1, x0 : x1 + 1], mask)[0]


def unclip(box: np.ndarray, ratio: float) -> np.ndarray:
    """DB's box growth: every edge pushed out by area * ratio / perimeter (for a rectangle, its
    corners move along both edge normals)."""
    area, perimeter = cv2.contourArea(box), cv2.arcLength(box, True)
    offset = area * ratio / max(perimeter, 1e-6)
    centre = box.mean(axis=0)
    edges = np.roll(box, -1, axis=0) - box
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1) / np.maximum(np.linalg.norm(edges, axis=1, keepdims=True), 1e-6)
    normals *= np.sign(((box + edges / 2 - centre) * normals).sum(1, keepdims=True))  # outwards
    # Each corner lies on two edges (its own and the previous one): pushed along both normals.
    return (box + offset * (normals + np.roll(normals, 1, axis=0))).astype(np.float32)


def boxes_from_map(probability: np.ndarray, size: tuple[int, int], threshold: float = 0.3, box_threshold: float = 0.6,
                   unclip_ratio: float = 1.5, min_size: int = 3, max_candidates: int = 1000) -> list[tuple[np.ndarray, float]]:
    """DB post-processing: a (h, w) probability map -> [(box (4, 2) in the image's (H, W) pixels, score)]."""
    h, w = probability.shape
    contours, _ = cv2.findContours((probability > threshold).astype(np.uint8) * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    found = []
    for contour in contours[:max_candidates]:
        box, short = mini_box(contour)
        if short < min_size:
            continue
        score = box_score(probability, box)
        if score < box_threshold:
            continue
        box, short = mini_box(unclip(box, unclip_ratio).reshape(-1, 1, 2))
        if short < min_size + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] * size[1] / w), 0, size[1])
        box[:, 1] = np.clip(np.round(box[:, 1] * size[0] / h), 0, size[0])
        found.append((box, score))
    return found


def reading_order(boxes: list[np.ndarray]) -> list[int]:
    """PaddleOCR's sorted_boxes: by the top-left corner, top to bottom, then each box moved left
    past its predecessors on the same line (top-left corners within 10 px in height)."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0][1], boxes[i][0][0]))
    for i in range(len(order) - 1):
        for j in range(i, -1, -1):
            a, b = boxes[order[j]][0], boxes[order[j + 1]][0]
            if abs(b[1] - a[1]) < 10 and b[0] < a[0]:
                order[j], order[j + 1] = order[j + 1], order[j]
            else:
                break
    return order


def crop_upright(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """PaddleOCR's get_rotate_crop_image: the box warped to an upright rectangle, turned when tall."""
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    width, height = max(width, 1), max(height, 1)
    target = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    crop = cv2.warpPerspective(image, cv2.getPerspectiveTransform(box.astype(np.float32), target), (width, height),
                               borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC)
    return np.rot90(crop) if height / width >= 1.5 else crop


# -- recognition -------------------------------------------------------------------------
def recognition_input(crops: list[np.ndarray], height: int = 48, width: int = 320, max_width: int = 3200) -> torch.Tensor:
    """Crops (h, w, 3) uint8 -> (N, 3, 48, W): each resized to height 48 keeping its ratio, up to
    the widest crop's width (at least 320), normalised to [-1, 1], right-padded with 0."""
    ratio = max(max(c.shape[1] / c.shape[0] for c in crops), width / height)
    target = min(math.ceil(height * ratio), max_width)
    batch = torch.zeros(len(crops), 3, height, target)
    for i, crop in enumerate(crops):
        w = min(target, math.ceil(height * crop.shape[1] / crop.shape[0]))
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(height, w), mode="bilinear", align_corners=False, antialias=True)[0] / 255
        batch[i, :, :, :w] = (x - 0.5) / 0.5
    return batch


def ctc_greedy(probabilities: torch.Tensor, characters: list[str]) -> list[tuple[str, float]]:
    """(N, T, C) per-step character probabilities (index 0 the CTC blank) -> [(text, confidence)]:
    the most likely character at each step, repeats merged, blanks removed, the confidence the mean
    probability of what was kept (0 for an empty line)."""
    best, index = probabilities.max(dim=-1)
    out = []
    for p, i in zip(best, index):
        keep = torch.ones_like(i, dtype=torch.bool)
        keep[1:] = i[1:] != i[:-1]
        keep &= i != 0
        out.append(("".join(characters[k] for k in i[keep].tolist()), float(p[keep].mean()) if keep.any() else 0.0))
    return out


class PaddleOcr:
    """Reads the text lines of images with PP-OCRv5 detection + recognition (transformers' ports)."""

    def __init__(self, detection_path: str, recognition_path: str, drop_score: float = 0.5, limit_side_len: int = 960):
        from transformers import AutoModelForObjectDetection, AutoModelForTextRecognition

        self.detector = AutoModelForObjectDetection.from_pretrained(detection_path).eval().requires_grad_(False)
        self.recognizer = AutoModelForTextRecognition.from_pretrained(recognition_path).eval().requires_grad_(False)
        processor = Path(recognition_path) / "preprocessor_config.json"
        if not processor.is_file():
            from huggingface_hub import hf_hub_download

            processor = hf_hub_download(recognition_path, "preprocessor_config.json")
        self.characters = list(json.loads(Path(processor).read_text())["character_list"])
        classes = self.recognizer.config.head_out_channels
        if len(self.characters) != classes:
            raise ValueError(f"{recognition_path}: the processor's character_list has {len(self.characters)} entries "
                             f"(blank first), the recognizer {classes} classes")
        self.drop_score, self.limit_side_len = drop_score, limit_side_len

    @torch.no_grad()
    def read(self, image: np.ndarray) -> list[tuple[str, float]]:
        """(H, W, 3) uint8 RGB -> its text lines in reading order, [(text, confidence)], those
        below `drop_score` left out."""
        d = self.detector
        probability = d(pixel_values=detection_input(image, self.limit_side_len).to(d.device, d.dtype)).last_hidden_state[0, 0]
        probability = probability.float().cpu()
        boxes = [box for box, _ in boxes_from_map(probability.numpy(), image.shape[:2])]
        if not boxes:
            return []
        crops = [crop_upright(image, boxes[i]) for i in reading_order(boxes)]
        r = self.recognizer
        lines = ctc_greedy(r(pixel_values=recognition_input(crops).to(r.device, r.dtype)).last_hidden_state.float().cpu(),
                           self.characters)
        return [(text, score) for text, score in lines if score >= self.drop_score]


class OcrReward:
    """(images, prompts) -> Flow-GRPO's OCR reward (B,), in [0, 1]."""

    @staticmethod
    def check_config(cfg, node, where: str) -> None:
        """It reads the text in each prompt's quotes: a prompt without any is refused before any work."""
        for split, prompts in scored_splits(cfg, where).items():
            for prompt in prompts:
                try:
                    ocr_target(prompt)
                except ValueError as error:
                    raise ConfigError(f"model.prompts.{split}: {error} ({where} is reward=ocr; the shipped set: "
                                      f"model.prompts.train='${{prompt_set:ocr_signs}}' "
                                      f"model.prompts.eval='${{prompt_set:ocr_signs_eval}}')") from None

    def __init__(self, detection_path: str, recognition_path: str, drop_score: float = 0.5, limit_side_len: int = 960):
        self.ocr = PaddleOcr(detection_path, recognition_path, drop_score, limit_side_len)

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        targets = [ocr_target(p) for p in prompts]  # before any work: a prompt without quotes is refused
        rewards = []
        for image, target in zip(to_pil(images), targets):
            lines = self.ocr.read(np.asarray(image.convert("RGB")))
            rewards.append(ocr_reward("".join(text for text, score in lines if score > 0), target))
        return torch.tensor(rewards, dtype=torch.float32)
