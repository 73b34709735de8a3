"""reward=ocr (rlft.rewards.ocr): Flow-GRPO's score on hand-worked cases, the quoted target and its
refusal, CTC decoding, DB box extraction on a hand-made probability map, PaddleOCR's reading order,
the whole reader on tiny PP-OCRv5 detection and recognition models saved here (set so that they
detect the whole image and read one known character), the shipped prompt set, and GRPO through the
CLI on the tiny SD3."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (PPOCRV5ServerDetConfig, PPOCRV5ServerDetForObjectDetection, PPOCRV5ServerRecConfig,
                          PPOCRV5ServerRecForTextRecognition)

from rlft.prompts import prompt_set
from rlft.prompts.ocr import ocr_prompts
from rlft.rewards.ocr import (OcrReward, boxes_from_map, ctc_greedy, ocr_reward, ocr_target, reading_order,
                              recognition_input)
from rlft.run.validation import ConfigError, validate
from rlft.tools.tensorboard import read_scalars
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft

CHARACTERS = ["<blank>", *"abcdefghijklmnopqrstuvwxyz", " "]  # index 0: the CTC blank, as the port's list


def save_tiny_ocr(root: Path, read: str = "b") -> tuple[Path, Path]:
    """Tiny PP-OCRv5 server detection and recognition models (the transformers tests' sizes), their
    last layers set so that the detector sees text everywhere (the whole image is one box) and the
    recognizer reads `read` (one character, at every step: CTC merges it to one)."""
    torch.manual_seed(0)
    det_config = PPOCRV5ServerDetConfig(
        backbone_config={"model_type": "hgnet_v2", "out_features": ["stage1", "stage2", "stage3", "stage4"],
                         "out_indices": [1, 2, 3, 4], "depths": [1, 1, 1, 1], "hidden_sizes": [16, 32, 64, 128],
                         "stage_in_channels": [16, 16, 32, 64], "stage_mid_channels": [16, 16, 32, 64],
                         "stage_out_channels": [16, 32, 64, 128], "stage_num_blocks": [1, 1, 1, 1],
                         "stage_downsample": [False, True, True, True], "stage_light_block": [False, False, True, True],
                         "stage_kernel_size": [3, 3, 5, 5], "stage_numb_of_layers": [1, 1, 1, 1],
                         "stem_channels": [3, 8, 16], "embedding_size": 16},
        neck_out_channels=32, intraclass_block_number=4, scale_factor_list=[1, 2, 4, 8], kernel_list=[3, 2, 2],
        intraclass_block_config={
            "reduce_channel": [1, 1, 0], "return_channel": [1, 1, 0],
            "vertical_long_to_small_conv_longratio": [[7, 1], [1, 1], [3, 0]],
            "vertical_long_to_small_conv_midratio": [[5, 1], [1, 1], [2, 0]],
            "vertical_long_to_small_conv_shortratio": [[3, 1], [1, 1], [1, 0]],
            "horizontal_small_to_long_conv_longratio": [[1, 7], [1, 1], [0, 3]],
            "horizontal_small_to_long_conv_midratio": [[1, 5], [1, 1], [0, 2]],
            "horizontal_small_to_long_conv_shortratio": [[1, 3], [1, 1], [0, 1]],
            "symmetric_conv_long_longratio": [[7, 7], [1, 1], [3, 3]],
            "symmetric_conv_long_midratio": [[5, 5], [1, 1], [2, 2]],
            "symmetric_conv_long_shortratio": [[3, 3], [1, 1], [1, 1]],
        },
    )
    detector = PPOCRV5ServerDetForObjectDetection(det_config).eval()
    with torch.no_grad():  # both branches of the head: sigmoid(20) everywhere
        for final in (detector.head.binarize_head.conv_final, detector.head.local_refinement_module.convolution_final):
            final.weight.zero_()
            final.bias.fill_(20.0)
    detector.save_pretrained(root / "det")

    recognizer = PPOCRV5ServerRecForTextRecognition(PPOCRV5ServerRecConfig(head_out_channels=len(CHARACTERS))).eval()
    with torch.no_grad():
        recognizer.head.head.weight.zero_()
        recognizer.head.head.bias.zero_()
        recognizer.head.head.bias[CHARACTERS.index(read)] = 20.0
    recognizer.save_pretrained(root / "rec")
    (root / "rec" / "preprocessor_config.json").write_text(json.dumps({"character_list": CHARACTERS}))
    return root / "det", root / "rec"


@pytest.fixture(scope="module")
def tiny_ocr(tmp_path_factory):
    return save_tiny_ocr(tmp_path_factory.mktemp("ocr"))


def test_the_target_is_the_text_in_the_first_quotes():
    assert ocr_target('A sign that says "Hello World" and "more"') == "Hello World"
    for prompt in ("a sign without quotes", 'only one " quote', 'empty "  " quotes'):
        with pytest.raises(ValueError, match="first pair of double quotes, and the prompt .* has none"):
            ocr_target(prompt)


@pytest.mark.parametrize("read,target,reward", [
    ("HELLOWORLD", "Hello World", 1.0),  # spaces and case ignored
    ("xx hello world yy", "Hello World", 1.0),  # found inside what was read: distance 0
    ("helo", "hello", 0.8),  # one deletion of five
    ("", "abc", 0.0),
    ("something else entirely", "ab", 0.0),  # the distance is capped at the target's length
    ("abd", "abc", 1 - 1 / 3),
])
def test_the_reward_is_flow_grpos_formula(read, target, reward):
    assert ocr_reward(read, target) == pytest.approx(reward)


def test_ctc_decoding_merges_repeats_and_drops_blanks():
    steps = [1, 1, 0, 2, 2, 0, 1, 0]  # a a _ b b _ a _  ->  "aba"
    probs = torch.full((1, len(steps), 4), 0.1)
    for t, k in enumerate(steps):
        probs[0, t, k] = 0.7 if k else 0.9
    (text, confidence), = ctc_greedy(probs, ["_", "a", "b", "c"])
    assert text == "aba" and confidence == pytest.approx(0.7)  # mean over the kept steps 0, 3, 6
    assert ctc_greedy(torch.zeros(1, 3, 4).index_fill_(2, torch.tensor([0]), 1.0), ["_", "a", "b", "c"]) == [("", 0.0)]


def test_db_boxes_grow_a_text_region_by_the_unclip_offset_and_scale_to_the_image():
    probability = np.zeros((64, 128), dtype=np.float32)
    probability[10:30, 20:80] = 0.9  # rows 10-29, columns 20-79
    (box, score), = boxes_from_map(probability, (128, 256))
    assert score == pytest.approx(0.9, abs=1e-6)
    # The contour's minimum-area rectangle spans 59 x 19 pixels (pixel centres); DB pushes each side out
    # by area * 1.5 / perimeter, then the box is scaled by 2 to the image.
    offset = 59 * 19 * 1.5 / (2 * (59 + 19))
    expected = np.array([[20 - offset, 10 - offset], [79 + offset, 10 - offset], [79 + offset, 29 + offset],
                         [20 - offset, 29 + offset]]) * 2
    expected = np.clip(np.round(expected), 0, [256, 128])
    np.testing.assert_allclose(box, expected, atol=2)
    assert boxes_from_map(np.full((32, 32), 0.5, dtype=np.float32), (32, 32)) == []  # above 0.3 but scored under 0.6


def test_reading_order_is_paddleocrs():
    box = lambda x, y: np.array([[x, y], [x + 10, y], [x + 10, y + 5], [x, y + 5]], dtype=np.float32)
    boxes = [box(50, 40), box(0, 42), box(80, 0), box(10, 3)]  # two lines, each out of order
    assert reading_order(boxes) == [3, 2, 1, 0]


def test_recognition_input_keeps_the_ratio_and_pads():
    crops = [np.full((24, 240, 3), 255, np.uint8), np.zeros((48, 48, 3), np.uint8)]
    batch = recognition_input(crops)
    assert batch.shape == (2, 3, 48, 480)  # the widest ratio, 10, at height 48
    assert torch.all(batch[0] == 1) and torch.all(batch[1, :, :, :48] == -1) and torch.all(batch[1, :, :, 48:] == 0)


@pytest.mark.parametrize("prompt,reward", [('a sign that says "B"', 1.0), ('a sign that says "bx"', 0.5),
                                           ('a sign that says "zzz"', 0.0)])
def test_the_reader_detects_crops_recognises_and_scores(tiny_ocr, prompt, reward):
    ocr = OcrReward(str(tiny_ocr[0]), str(tiny_ocr[1]))
    assert ocr.ocr.read(np.zeros((64, 96, 3), np.uint8)) == [("b", pytest.approx(1.0, abs=1e-6))]
    assert ocr(torch.rand(2, 3, 64, 96), [prompt] * 2).tolist() == pytest.approx([reward] * 2)


def test_lines_under_the_drop_score_are_not_read(tiny_ocr):
    ocr = OcrReward(str(tiny_ocr[0]), str(tiny_ocr[1]), drop_score=1.01)
    assert ocr(torch.rand(1, 3, 64, 96), ['"b"']).tolist() == [0.0]


def test_a_character_list_that_does_not_fit_the_recognizer_is_refused(tiny_ocr, tmp_path):
    import shutil

    rec = shutil.copytree(tiny_ocr[1], tmp_path / "rec")
    (rec / "preprocessor_config.json").write_text(json.dumps({"character_list": CHARACTERS[:-1]}))
    with pytest.raises(ValueError, match="character_list has 27 entries .* the recognizer 28 classes"):
        OcrReward(str(tiny_ocr[0]), str(rec))


def test_the_shipped_prompt_sets_are_what_the_generator_writes():
    train, evaluation = ocr_prompts()
    assert prompt_set("ocr_signs") == train and prompt_set("ocr_signs_eval") == evaluation
    assert len(train) == 384 and len(evaluation) == 40
    assert not {ocr_target(p) for p in train} & {ocr_target(p) for p in evaluation}  # held-out texts


def test_prompts_without_quotes_are_refused_at_composition():
    with pytest.raises(ConfigError, match=r"model.prompts.train: reward=ocr scores the text in a prompt's first pair "
                                          r"of double quotes, and the prompt 'a handwritten 0' has none"):
        validate(compose_cfg(["reward=ocr"]))
    with pytest.raises(ConfigError, match=r"reward.rewards.ocr is reward=ocr"):
        validate(compose_cfg(["reward=multi", "reward.components={ocr:1.0,compressibility:1.0}"]))


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_the_tiny_sd3_with_ocr_prompts_through_the_cli(tiny_ocr, tmp_path, algorithm):
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    run = tmp_path / "run"
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith("reward")]
    overrides = [a for a in overrides if not a.startswith("model.prompts")]
    (tmp_path / "train.txt").write_text('a sign that says "b"\na "B" on a wall\n')
    (tmp_path / "eval.txt").write_text('a "bb" sign\n')
    run_rlft(*overrides, "model.max_sequence_length=8", f"algorithm={algorithm}",
             *(["algorithm.group_size=2"] if algorithm == "grpo" else []),
             "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2", "reward=ocr",
             f"reward.detection_path={tiny_ocr[0]}", f"reward.recognition_path={tiny_ocr[1]}",
             f"model.prompts.train=${{prompt_set:{tmp_path}/train.txt}}", f"model.prompts.eval=${{prompt_set:{tmp_path}/eval.txt}}",
             f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    # The tiny reader reads "b" in every image: the training targets are "b" and "B", the held-out one "bb".
    assert s["reward/mean"] and all(v == 1.0 for _, v in s["reward/mean"])
    assert s["eval/oracle_reward"] and all(v == 0.5 for _, v in s["eval/oracle_reward"])
