"""GenEval's rules (Ghosh et al. 2023): detections of the 80 COCO classes, judged against a prompt's
metadata. Plain functions, no model: `rlft.rewards.geneval` runs the detector and the colour
classifier and hands their answers to these.

Read from GenEval's `evaluation/evaluate_images.py` and the in-process copy that DiffusionNFT
trains with (`flow_grpo/gen_eval.py`, the reward flow_grpo's GenEval runs use):

- detections per class sorted by confidence, kept above 0.3 (0.9 when the prompt's tag is
  `counting`), at most 16 per class (GenEval's NMS threshold is 1.0: no suppression);
- three verdicts per image:
  * `correct`, GenEval's benchmark metric: every `include` clause holds for its `count` most
    confident objects (at least `count` found, `color` of all of them, `position` of each relative
    to each object of the clause it names), and no `exclude` clause's class is found `count` times;
  * `strict`, the training code's: as `correct`, but the found count must equal `count` exactly;
  * `partial`, the training reward (`score`): the mean of a part per clause check:
    `1 - |count - found| / count` (negative when far too many are found), on a count mismatch a 0
    for the colour or position it asked for, `1 - |count - found of that colour| / count` for the
    colour, and 1 or 0 for the position. The training code appends a 1 after a *failed* position
    check as well (a 0 and a 1); `position_quirk=True` keeps that, so the numbers equal its own.
- relative position: the offset of the boxes' centres, shrunk per axis by 0.1 x (the sum of the
  two boxes' sizes), as a unit vector: x < -0.5 "left of", x > 0.5 "right of", y < -0.5 "above",
  y > 0.5 "below" (image y points down); no relation when the shrunk offset vanishes.
"""

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
POSITIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# GenEval's object_names.txt: COCO's 80 classes in the detector's label order, a few renamed so that
# they read as prompts ("computer mouse" for COCO's "mouse", "tv remote", "computer keyboard").
CLASSNAMES = tuple((Path(__file__).parent / "geneval_object_names.txt").read_text().splitlines())


@dataclass
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    mask: np.ndarray | None = None  # (H, W) bool, the instance's pixels


@dataclass
class Verdict:
    correct: bool  # GenEval's benchmark metric
    strict: bool  # every clause holds with the exact count (the training code's strict score)
    partial: float  # the training reward
    reasons: list[str] = field(default_factory=list)


# Colours of a clause's objects: (class name, its detections) -> one of COLORS per detection.
ColorsOf = Callable[[str, Sequence[Detection]], list[str]]


def keep_confident(detections: dict[str, list[Detection]], tag: str, threshold: float = 0.3,
                   counting_threshold: float = 0.9, max_objects: int = 16) -> dict[str, list[Detection]]:
    """Per class: the detections above the threshold, most confident first, at most `max_objects`;
    classes with none left are dropped."""
    bar = counting_threshold if tag == "counting" else threshold
    kept = {}
    for name, found in detections.items():
        ordered = sorted((d for d in found if d.score > bar), key=lambda d: -d.score)[:max_objects]
        if ordered:
            kept[name] = ordered
    return kept


def relative_position(a: Detection, b: Detection, threshold: float = 0.1) -> set[str]:
    """Where A is relative to B."""
    box_a, box_b = np.asarray(a.box[:4], dtype=np.float64), np.asarray(b.box[:4], dtype=np.float64)
    center_a, center_b = (box_a[:2] + box_a[2:]) / 2, (box_b[:2] + box_b[2:]) / 2
    size_a, size_b = np.abs(box_a[2:] - box_a[:2]), np.abs(box_b[2:] - box_b[:2])
    offset = center_a - center_b
    shrunk = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _position_holds(found: Sequence[Detection], targets: Sequence[Detection], relation: str) -> bool:
    return all(relation in relative_position(obj, target) for obj in found for target in targets)


def correct(metadata: dict, objects: dict[str, list[Detection]], colors_of: ColorsOf,
            reasons: list[str] | None = None) -> bool:
    """GenEval's benchmark verdict (`evaluate`): each include clause judged on its `count` most
    confident objects, then the exclude clauses."""
    reasons = [] if reasons is None else reasons
    ok, groups = True, []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        elif "color" in clause and (n := colors_of(name, found).count(clause["color"])) < count:
            matched = False
            reasons.append(f"expected {clause['color']} {name}>={count}, found {n}")
        if matched and "position" in clause:
            relation, target = clause["position"]
            if groups[target] is None:
                matched = False
                reasons.append(f"no target for {name} to be {relation}")
            elif not _position_holds(found, groups[target], relation):
                matched = False
                reasons.append(f"expected {name} {relation} target")
        ok &= matched
        groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        if len(objects.get(clause["class"], [])) >= clause["count"]:
            ok = False
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {len(objects[clause['class']])}")
    return ok


def partial_and_strict(metadata: dict, objects: dict[str, list[Detection]], colors_of: ColorsOf,
                       position_quirk: bool = True, reasons: list[str] | None = None) -> tuple[float, bool]:
    """The training code's `evaluate_reward`: (mean of the parts, strict verdict). Exclude clauses
    are not read (an exact count implies them)."""
    reasons = [] if reasons is None else reasons
    parts, strict, groups = [], True, []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])
        parts.append(1 - abs(count - len(found)) / count)
        matched = len(found) == count
        if not matched:
            reasons.append(f"expected {name}=={count}, found {len(found)}")
            if "color" in clause or "position" in clause:
                parts.append(0.0)
        else:
            if "color" in clause:
                n = colors_of(name, found).count(clause["color"])
                parts.append(1 - abs(count - n) / count)
                if n != count:
                    matched = False
                    reasons.append(f"expected {clause['color']} {name}=={count}, found {n}")
            if "position" in clause and matched:
                relation, target = clause["position"]
                if groups[target] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                    parts.append(0.0)
                else:
                    if not _position_holds(found, groups[target], relation):
                        matched = False
                        reasons.append(f"expected {name} {relation} target")
                        parts.append(0.0)
                        if position_quirk:
                            parts.append(1.0)
                    else:
                        parts.append(1.0)
        strict &= matched
        groups.append(found if matched else None)
    return (sum(parts) / len(parts) if parts else 0.0), strict


def judge(metadata: dict, objects: dict[str, list[Detection]], colors_of: ColorsOf,
          position_quirk: bool = True) -> Verdict:
    """All three verdicts on detections already kept by `keep_confident`."""
    reasons: list[str] = []
    partial, strict = partial_and_strict(metadata, objects, colors_of, position_quirk, reasons)
    return Verdict(correct=correct(metadata, objects, colors_of), strict=strict, partial=partial, reasons=reasons)


def check_metadata(metadata: dict) -> None:
    """Refuses metadata that GenEval's rules cannot read, naming what is wrong."""
    if not isinstance(metadata, dict) or not metadata.get("include"):
        raise ValueError(f"GenEval metadata needs an 'include' list of clauses: {metadata!r}")
    if metadata.get("tag") not in TAGS:
        raise ValueError(f"GenEval metadata tag {metadata.get('tag')!r} is not one of {list(TAGS)}")
    for i, clause in enumerate([*metadata["include"], *metadata.get("exclude", [])]):
        if clause.get("class") not in CLASSNAMES:
            raise ValueError(f"GenEval clause {clause!r}: class {clause.get('class')!r} is not one of the 80 COCO "
                             f"classes GenEval names (rlft/rewards/geneval_object_names.txt)")
        if not isinstance(clause.get("count"), int) or clause["count"] < 1:
            raise ValueError(f"GenEval clause {clause!r}: count must be an integer >= 1")
        if "color" in clause and clause["color"] not in COLORS:
            raise ValueError(f"GenEval clause {clause!r}: color must be one of {list(COLORS)}")
        if "position" in clause:
            relation, target = clause["position"]
            if relation not in POSITIONS or not (isinstance(target, int) and 0 <= target < i):
                raise ValueError(f"GenEval clause {clause!r}: position must be [relation, index of an earlier "
                                 f"include clause], relation one of {list(POSITIONS)}")


SHIPPED = Path(__file__).parents[1] / "prompts"
SCORES = ("partial", "strict", "correct")


def metadata_files(metadata: Sequence[str] | str | None) -> list[Path]:
    if metadata is None:
        return sorted(SHIPPED.glob("geneval_*.jsonl"))
    return [Path(p) for p in ([metadata] if isinstance(metadata, str) else metadata)]


def load_metadata(metadata: Sequence[str] | str | None = None) -> dict[str, dict]:
    """prompt -> its GenEval metadata, from JSON-lines files (each line one prompt's metadata)."""
    table = {}
    for path in metadata_files(metadata):
        if not path.is_file():
            raise FileNotFoundError(f"no GenEval metadata file {str(path)!r} (JSON lines, one "
                                    f"{{'tag', 'include', 'prompt'}} object per line)")
        for line in path.read_text().splitlines():
            if line.strip():
                entry = json.loads(line)
                check_metadata(entry)
                table[entry["prompt"]] = entry
    return table


def metadata_of(table: dict[str, dict], prompt: str) -> dict:
    if prompt not in table:
        raise ValueError(f"reward=geneval: the prompt {prompt!r} has no GenEval metadata (tag, include clauses) in "
                         f"reward.metadata; use the shipped sets model.prompts.train='${{prompt_set:geneval_train}}' "
                         f"model.prompts.eval='${{prompt_set:geneval_eval}}', or name the JSON-lines files that "
                         f"describe your prompts")
    return table[prompt]
