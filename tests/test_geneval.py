"""reward=geneval (rlft.rewards.geneval, geneval_rules, rlft.prompts.geneval): GenEval's rules on
hand-made detections against hand-worked answers (counts, thresholds, positions, colours, the three
verdicts, the training code's position quirk), the prompt generator against GenEval's published
suite, mmdet's Mask2Former post-processing against a brute-force computation, the colour classifier
against CLIP's own forward, the whole reward on a tiny Mask2Former set to see two cats in every
image, refusals, and GRPO and PPO through the CLI on the tiny SD3."""

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor, Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
from transformers.models.mask2former.image_processing_pil_mask2former import Mask2FormerImageProcessorPil

from rlft.prompts import prompt_set
from rlft.prompts.geneval import suite, train_and_eval
from rlft.rewards.geneval import COLOR_TEMPLATES, ClipColors, GenEvalReward, instance_detections, mask_boxes
from rlft.rewards.geneval_rules import (CLASSNAMES, COLORS, Detection, check_metadata, correct, judge, keep_confident,
                                        load_metadata, partial_and_strict, relative_position)
from rlft.run.validation import ConfigError, validate
from rlft.tools.tensorboard import read_scalars
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft
from tests.tiny_sd import save_tiny_clip

BY_PROMPT = {s["prompt"]: s for s in suite()}


def box(x1, y1, x2, y2, score=0.95):
    return Detection((x1, y1, x2, y2), score)


def no_colors(name, found):
    raise AssertionError("no colour was asked for")


def painted(*colors):
    """A colour classifier that answers `colors` in turn for the objects it is given."""
    return lambda name, found: list(colors[:len(found)])


# --- the rules, on hand-made detections -------------------------------------------------------------

def test_detections_are_kept_above_the_threshold_most_confident_first_at_most_16():
    found = {"cat": [box(0, 0, 1, 1, s) for s in (0.31, 0.95, 0.3, 0.5)], "dog": [box(0, 0, 1, 1, 0.2)],
             "cup": [box(0, 0, 1, 1, 0.99)] * 20}
    kept = keep_confident(found, "two_object")
    assert [d.score for d in kept["cat"]] == [0.95, 0.5, 0.31] and "dog" not in kept and len(kept["cup"]) == 16
    assert [d.score for d in keep_confident(found, "counting")["cat"]] == [0.95]  # 0.9 for counting prompts


@pytest.mark.parametrize("a, b, expected", [
    # centres 20 apart on x, sizes 10 + 10: the offset shrinks by 2 to -18, over |offset| 20: -0.9 -> left of
    ((0, 0, 10, 10), (20, 0, 30, 10), {"left of"}),
    ((20, 0, 30, 10), (0, 0, 10, 10), {"right of"}),
    ((0, 30, 10, 40), (0, 0, 10, 10), {"below"}),  # image y points down
    # (-10, -10) shrinks to (-8, -8), over 14.14: -0.566 on both axes
    ((0, 0, 10, 10), (10, 10, 20, 20), {"left of", "above"}),
    # (-10, -2): x -8 / 10.2 = -0.78; y shrinks to 0
    ((0, 0, 10, 10), (10, 2, 20, 12), {"left of"}),
    ((0, 0, 10, 10), (1, 0, 11, 10), set()),  # overlapping: the shrunk offset vanishes
    # (-6, 0) with sizes 10 + 30: shrinks by 4 to -2, over 6: -0.33, not beyond 0.5
    ((0, 0, 10, 10), (-9, -10, 21, 20), set()),
])
def test_relative_position(a, b, expected):
    assert relative_position(box(*a), box(*b)) == expected


def test_objects_found_once_each_score_one():
    v = judge(BY_PROMPT["a photo of a bench"], {"bench": [box(0, 0, 5, 5)], "cat": [box(0, 0, 1, 1)]}, no_colors)
    assert (v.partial, v.strict, v.correct) == (1.0, True, True)  # other classes do not matter
    two = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], "prompt": "x"}
    v = judge(two, {"cat": [box(0, 0, 5, 5)], "dog": [box(5, 5, 9, 9)]}, no_colors)
    assert (v.partial, v.strict, v.correct) == (1.0, True, True)
    v = judge(two, {"cat": [box(0, 0, 5, 5)]}, no_colors)  # parts 1 and 1 - 1/1
    assert (v.partial, v.strict, v.correct) == (0.5, False, False)


def test_counts_partial_credit_the_exact_count_and_the_benchmarks_at_least():
    clocks = BY_PROMPT["a photo of two clocks"]
    assert clocks["include"] == [{"class": "clock", "count": 2}] and clocks["exclude"] == [{"class": "clock", "count": 3}]
    for n, partial in ((0, 0.0), (1, 0.5), (2, 1.0), (3, 0.5), (4, 0.0), (6, -1.0)):  # 1 - |2 - n| / 2
        v = judge(clocks, {"clock": [box(0, 0, 1, 1)] * n} if n else {}, no_colors)
        assert v.partial == partial and v.strict == (n == 2)
        assert v.correct == (n == 2)  # at least two, and not three (the exclude clause)
    # A single object found twice: the benchmark counts "at least one", the strict score "exactly one".
    v = judge(BY_PROMPT["a photo of a bench"], {"bench": [box(0, 0, 1, 1)] * 2}, no_colors)
    assert (v.partial, v.strict, v.correct) == (0.0, False, True)


def test_colours_are_judged_on_the_found_objects():
    car = BY_PROMPT["a photo of a pink car"]
    v = judge(car, {"car": [box(0, 0, 1, 1)]}, painted("pink"))
    assert (v.partial, v.strict, v.correct) == (1.0, True, True)
    v = judge(car, {"car": [box(0, 0, 1, 1)]}, painted("red"))  # parts: count 1, colour 0
    assert (v.partial, v.strict, v.correct) == (0.5, False, False)
    v = judge(car, {}, no_colors)  # parts: count 0 and a 0 for the colour it asked for
    assert (v.partial, v.strict, v.correct) == (0.0, False, False)
    # Two cars: the count part is 0 and the colour is not asked (strict); the benchmark judges the
    # colour of the most confident one.
    v = judge(car, {"car": [box(0, 0, 1, 1), box(2, 2, 3, 3)]}, painted("pink", "red"))
    assert (v.partial, v.strict, v.correct) == (0.0, False, True)
    attr = {"tag": "color_attr", "prompt": "x", "include": [{"class": "cat", "count": 1, "color": "red"},
                                                            {"class": "dog", "count": 1, "color": "blue"}]}
    colors = {"cat": ["red"], "dog": ["green"]}
    v = judge(attr, {"cat": [box(0, 0, 1, 1)], "dog": [box(2, 2, 3, 3)]}, lambda name, found: colors[name])
    assert (v.partial, v.strict, v.correct) == (0.75, False, False)  # parts 1, 1, 1, 0


def test_positions_and_the_training_codes_quirk():
    meta = BY_PROMPT["a photo of a dog right of a teddy bear"]
    assert meta["include"] == [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}]
    bear, right, left = box(0, 0, 10, 10), box(20, 0, 30, 10), box(-30, 0, -20, 10)
    v = judge(meta, {"teddy bear": [bear], "dog": [right]}, no_colors)
    assert (v.partial, v.strict, v.correct) == (1.0, True, True)  # parts 1 | 1, 1
    # Wrong side: parts 1 | 1, 0 and, in the training code, a 1 after the failed check: 3/4.
    v = judge(meta, {"teddy bear": [bear], "dog": [left]}, no_colors)
    assert (v.partial, v.strict, v.correct) == (0.75, False, False)
    assert partial_and_strict(meta, {"teddy bear": [bear], "dog": [left]}, no_colors, position_quirk=False) == (2 / 3, False)
    # No bear: parts 0 | 1, 0 (no target to be right of).
    v = judge(meta, {"dog": [right]}, no_colors)
    assert (v.partial, v.strict, v.correct) == (pytest.approx(1 / 3), False, False)


def test_the_benchmark_judges_the_most_confident_objects_only():
    meta = {"tag": "colors", "prompt": "x", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    asked = []
    correct(meta, {"cat": [box(0, 0, 1, 1, 0.9), box(2, 2, 3, 3, 0.8)]},
            lambda name, found: asked.append(len(found)) or ["red"] * len(found))
    assert asked == [1]


def test_metadata_is_checked_by_name():
    check_metadata(BY_PROMPT["a photo of two clocks"])
    for bad, message in [({"tag": "counting", "prompt": "x"}, "needs an 'include' list"),
                         ({"tag": "shapes", "include": [{"class": "cat", "count": 1}]}, "tag 'shapes' is not one of"),
                         ({"tag": "colors", "include": [{"class": "kitten", "count": 1}]}, "class 'kitten' is not one of the 80"),
                         ({"tag": "colors", "include": [{"class": "cat", "count": 0}]}, "count must be an integer >= 1"),
                         ({"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "teal"}]}, "color must be one of"),
                         ({"tag": "position", "include": [{"class": "cat", "count": 1, "position": ["left of", 0]}]},
                          "position must be \\[relation, index of an earlier include clause\\]")]:
        with pytest.raises(ValueError, match=message):
            check_metadata(bad)


# --- the prompt sets ---------------------------------------------------------------------------------

def test_the_generator_writes_genevals_published_suite():
    """GenEval's evaluation_metadata.jsonl (seed 43): 553 prompts, its per-task counts, its first
    prompts (bench, cow, bicycle) and each task's first prompt as published."""
    rows = suite()
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                                               "position": 100, "color_attr": 100}
    assert [r["prompt"] for r in rows[:3]] == ["a photo of a bench", "a photo of a cow", "a photo of a bicycle"]
    first = {tag: next(r["prompt"] for r in rows if r["tag"] == tag) for tag in ("counting", "position")}
    assert first == {"counting": "a photo of two clocks", "position": "a photo of a dog right of a teddy bear"}
    assert next(r for r in rows if r["tag"] == "color_attr")["include"][0] == {"class": "wine glass", "count": 1, "color": "purple"}
    assert {c["class"] for r in rows for c in r["include"]} <= set(CLASSNAMES) and len(CLASSNAMES) == 80


def test_the_shipped_sets_are_what_the_generator_writes():
    train, evaluation = train_and_eval()
    assert prompt_set("geneval_eval") == [r["prompt"] for r in evaluation]
    assert prompt_set("geneval_train") == [r["prompt"] for r in train] and len(train) == 1051
    assert not set(prompt_set("geneval_train")) & set(prompt_set("geneval_eval"))
    table = load_metadata()
    assert table["a photo of two clocks"] == BY_PROMPT["a photo of two clocks"] and len(table) == 553 + 1051


# --- the models --------------------------------------------------------------------------------------

def test_mask_boxes_are_the_masks_extents():
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 5, 7] = True
    assert mask_boxes(masks).tolist() == [[2, 1, 5, 3], [7, 5, 8, 6], [0, 0, 0, 0]]


def test_instance_post_processing_against_brute_force():
    torch.manual_seed(0)
    queries, classes, padded, resized, size = 4, 5, (8, 12), (8, 10), (20, 25)
    class_logits, mask_logits = torch.randn(queries, classes + 1) * 3, torch.randn(queries, 4, 6) * 2
    found = instance_detections(class_logits, mask_logits, padded, resized, size, max_per_image=7)
    # Brute force: every (query, class) pair, the 7 most probable, each mask upsampled, unpadded, resized.
    probabilities = class_logits.softmax(-1)
    pairs = sorted(((probabilities[q, c].item(), q, c) for q in range(queries) for c in range(classes)), reverse=True)[:7]
    expected = []
    for p, q, c in pairs:
        logits = torch.nn.functional.interpolate(mask_logits[q][None, None], size=padded, mode="bilinear")[0, 0]
        logits = torch.nn.functional.interpolate(logits[:8, :10][None, None], size=size, mode="bilinear")[0, 0]
        on = logits > 0
        ys, xs = np.nonzero(on.numpy())
        expected.append((c, p * logits.sigmoid()[on].mean().item(), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    ours = sorted(((d["label"], d["score"], list(d["box"])) for d in found), key=lambda t: -t[1])
    expected.sort(key=lambda t: -t[1])
    assert [t[0] for t in ours] == [t[0] for t in expected]
    np.testing.assert_allclose([t[1] for t in ours], [t[1] for t in expected], rtol=1e-5)
    assert [t[2] for t in ours] == [[float(v) for v in t[2]] for t in expected]
    assert found[0]["mask"].shape == size
    above = instance_detections(class_logits, mask_logits, padded, resized, size, max_per_image=7, min_score=0.1)
    assert sorted(d["score"] for d in above) == sorted(d["score"] for d in found if d["score"] > 0.1) and above


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def test_colours_are_clip_zero_shot_on_the_masked_crop(clip_dir):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8))
    mask = np.zeros((24, 30), dtype=bool)
    mask[4:20, 5:25] = rng.random((16, 20)) > 0.3
    objects = [Detection((5.0, 4.0, 25.0, 20.0), 0.9, mask), Detection((0.4, 0.6, 12.4, 10.5), 0.8, None)]
    crop = np.asarray(ClipColors.crop(image, objects[0]))
    pixels = np.where(mask[..., None], np.asarray(image), 0x99)[4:20, 5:25]
    assert (crop == pixels).all()
    assert np.asarray(ClipColors.crop(image, objects[1])).shape == (9, 12, 3)  # PIL rounds the box: y 0.6 -> 1, 10.5 -> 10

    # Independently: each colour's three prompts through CLIP, normalised, averaged, normalised;
    # the crops' embeddings; the most similar colour.
    model, processor = CLIPModel.from_pretrained(clip_dir), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        columns = []
        for c in COLORS:
            inputs = processor(text=[t.format(c=c, name="cat") for t in COLOR_TEMPLATES], padding=True,
                               truncation=True, max_length=16, return_tensors="pt")
            text = model(**inputs, pixel_values=torch.zeros(1, 3, 16, 16)).text_embeds  # unit rows
            columns.append(torch.nn.functional.normalize(text.mean(0), dim=0))
        crops = [Image.fromarray(pixels), ClipColors.crop(image, objects[1])]
        image_embeds = model(**processor(text=["x"], images=crops, return_tensors="pt")).image_embeds
        expected = [COLORS[i] for i in (image_embeds @ torch.stack(columns, 1)).argmax(1).tolist()]
    assert ClipColors(str(clip_dir))(image, "cat", objects) == expected


def save_two_cats_detector(path, labels: int = 80):
    """A tiny Mask2Former (Swin backbone, 2 queries, COCO's 80 classes) whose heads are set so that
    both queries see a cat over the whole image: class logits 20 for cat, 0 elsewhere; mask
    features and embeddings constant 1, so every mask logit is 32 (probability ~1)."""
    backbone = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, num_labels=labels, num_queries=2, hidden_dim=32, mask_feature_size=32,
                               feature_size=32, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=32, encoder_feedforward_dim=32, use_pretrained_backbone=False)
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[CLASSNAMES.index("cat")] = 20.0
        projection = model.model.pixel_level_module.decoder.mask_projection
        projection.weight.zero_()
        projection.bias.fill_(1.0)
        last = model.model.transformer_module.decoder.mask_predictor.mask_embedder.get_submodule("2.0")
        last.weight.zero_()
        last.bias.fill_(1.0)
    model.save_pretrained(path)
    Mask2FormerImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory):
    return save_two_cats_detector(tmp_path_factory.mktemp("m2f") / "m2f")


PROMPTS = ["a photo of a cat", "a photo of two cats", "a photo of three cats", "a photo of a dog", "a photo of a red cat"]


def write_metadata(path):
    rows = [{"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": PROMPTS[0]},
            {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}], "prompt": PROMPTS[1]},
            {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}], "prompt": PROMPTS[2]},
            {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": PROMPTS[3]},
            {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": PROMPTS[4]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_whole_reward_on_a_detector_that_sees_two_cats(detector_dir, clip_dir, tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl")
    images = torch.rand(5, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    scores = {s: GenEvalReward(str(detector_dir), str(clip_dir), [str(metadata)], score=s)(images, PROMPTS).tolist()
              for s in ("partial", "strict", "correct")}
    red = ClipColors(str(clip_dir))(Image.fromarray((images[4].permute(1, 2, 0) * 255).round().byte().numpy()), "cat",
                                    [Detection((0.0, 0.0, 32.0, 24.0), 1.0, np.ones((24, 32), dtype=bool))]) == ["red"]
    # Two full-image cats in every image. Partial: 1 - |count - 2| / count; the red cat's count is
    # off, so its colour part is 0. The benchmark: at least `count` (and not count + 1 for counting).
    assert scores["partial"] == pytest.approx([0.0, 1.0, 2 / 3, 0.0, 0.0])
    assert scores["strict"] == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert scores["correct"] == [1.0, 1.0, 0.0, 0.0, float(red)]


def test_the_detector_sees_mmdets_input_size_by_default(detector_dir):
    from rlft.rewards.geneval import Mask2FormerDetector

    image = Image.new("RGB", (48, 32))
    for size, expected in (((800, 1333), (1, 3, 800, 1216)), (None, (1, 3, 64, 96))):  # 1200 up to a multiple of 32
        processor = Mask2FormerDetector(str(detector_dir), size=size).processor
        assert tuple(processor(images=[image], return_tensors="pt")["pixel_values"].shape) == expected


def test_bad_settings_are_refused(detector_dir, clip_dir, tmp_path):
    metadata = str(write_metadata(tmp_path / "meta.jsonl"))
    with pytest.raises(ValueError, match=r"reward.score='accuracy' is invalid: one of \['partial', 'strict', 'correct'\]"):
        GenEvalReward(str(detector_dir), str(clip_dir), [metadata], score="accuracy")
    with pytest.raises(ValueError, match=r"the prompt 'a photo of a fox' has no GenEval metadata"):
        GenEvalReward(str(detector_dir), str(clip_dir), [metadata])(torch.rand(1, 3, 8, 8), ["a photo of a fox"])
    other = save_two_cats_detector(tmp_path / "other", labels=133)  # e.g. a COCO panoptic model
    with pytest.raises(ValueError, match=r"predicts 133 classes; GenEval needs a COCO instance segmentation model of its 80"):
        GenEvalReward(str(other), str(clip_dir), [metadata])


def test_prompts_without_metadata_are_refused_at_composition(tmp_path):
    shipped = ["reward=geneval", "model.prompts.train=${prompt_set:geneval_train}", "model.prompts.eval=${prompt_set:geneval_eval}"]
    validate(compose_cfg(shipped))  # every shipped prompt has its metadata
    with pytest.raises(ConfigError, match=r"model.prompts.train: reward=geneval: the prompt 'a handwritten 0' has no "
                                          r"GenEval metadata"):
        validate(compose_cfg(["reward=geneval"]))  # the default model's digit prompts
    with pytest.raises(ConfigError, match=r"reward.rewards.geneval.score='accuracy' is invalid: one of \['partial'"):
        validate(compose_cfg(["reward=multi", "reward.components={geneval:1.0,compressibility:1.0}",
                              "+reward.settings.geneval.score=accuracy", *shipped[1:]]))
    with pytest.raises(ConfigError, match=r"reward.metadata: no GenEval metadata file '/nowhere.jsonl'"):
        validate(compose_cfg([*shipped, "reward.metadata=[/nowhere.jsonl]"]))
    # Held out, GenEval scores the evaluation's prompts only.
    held_out = ["evaluation.rewards=[geneval]", "model.prompts.eval=${prompt_set:geneval_eval}"]
    validate(compose_cfg(held_out))  # the training prompts are the default model's digits
    with pytest.raises(ConfigError, match=r"model.prompts.eval: reward=geneval: the prompt 'the number zero' has no"):
        validate(compose_cfg(["evaluation.rewards=[geneval]"]))
    with pytest.raises(ConfigError, match=r"evaluation.settings.geneval.score='x' is invalid"):
        validate(compose_cfg([*held_out, "+evaluation.settings.geneval.score=x"]))


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_through_the_cli_on_the_tiny_sd3(detector_dir, clip_dir, tmp_path, algorithm):
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    metadata = write_metadata(tmp_path / "meta.jsonl")
    run = tmp_path / "run"
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith(("reward", "model.prompts"))]
    group = ["algorithm.group_size=2"] if algorithm == "grpo" else []
    run_rlft(*overrides, "model.max_sequence_length=8", f"algorithm={algorithm}", *group, "algorithm.sample_batch_size=2",
             "algorithm.train_batch_size=2", "reward=geneval", f"reward.detector_path={detector_dir}",
             f"reward.clip_path={clip_dir}", f"reward.metadata=[{metadata}]",
             "model.prompts.train=[a photo of two cats]", "model.prompts.eval=[a photo of three cats]",
             f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    # Two cats in every image: the trained prompt scores 1, the held-out one 1 - 1/3.
    assert s["reward/mean"] and all(v == 1.0 for _, v in s["reward/mean"])
    assert s["eval/oracle_reward"] and all(v == pytest.approx(2 / 3) for _, v in s["eval/oracle_reward"])
