"""`rlft benchmark`: every evaluation prompt drawn `per_prompt` times and scored by the reward and
the held-out rewards; the same samples whatever the batch size; the table's numbers from the
scores (standard error, non-finite scores left out, GenEval's per-task means and their mean),
worked by hand on a tiny SD3 whose detector sees two cats in every image."""

import json
import math

import pytest

from rlft.tools.benchmark import summarize
from tests.test_errors import rlft
from tests.test_end_to_end import run_rlft


def test_the_summary_leaves_out_non_finite_scores_and_averages_groups():
    s = summarize([1.0, 0.0, math.nan, 1.0, 1.0], ["a", "a", "a", "b", "b"])
    assert (s["mean"], s["n"], s["nonfinite"]) == (0.75, 4, 1)
    assert s["sem"] == pytest.approx(math.sqrt(0.25 / 4))  # sample std 0.5 over sqrt(4)
    assert s["groups"] == {"a": 0.5, "b": 1.0} and s["mean_over_groups"] == 0.75
    assert "groups" not in summarize([1.0])


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_samples_do_not_depend_on_the_batch_size(tiny_model_dir, tmp_path):
    common = ["benchmark", f"model.pretrained={tiny_model_dir}", "policy.num_steps=3", "benchmark.per_prompt=2",
              "evaluation.rewards=[digit_alignment]"]
    out = run_rlft(*common, "benchmark.batch_size=3", f"benchmark.out={tmp_path}/a.jsonl", cwd=tmp_path).stdout
    run_rlft(*common, "benchmark.batch_size=32", f"benchmark.out={tmp_path}/b.jsonl", cwd=tmp_path)
    a, b = read(tmp_path / "a.jsonl"), read(tmp_path / "b.jsonl")
    assert [(r["prompt"], r["sample"]) for r in a] == [(r["prompt"], r["sample"]) for r in b]
    assert len(a) == 2 * len({r["prompt"] for r in a}) and [r["sample"] for r in a[:2]] == [0, 1]
    # The same noise: the same 8-bit images (equal JPEG sizes), float scores equal but for batched rounding
    # (float32, relative: a log-probability of -8.6 differed by 1.05e-5 between batches of 3 and 32 on an
    # AVX-512 AMD EPYC, 2026-12-07; another sample's score differs by more than 0.01).
    assert [r["reward"] for r in a] == [r["reward"] for r in b]
    assert [r["digit_alignment"] for r in a] == pytest.approx([r["digit_alignment"] for r in b], rel=1e-5, abs=1e-5)
    assert len({round(r["digit_alignment"], 3) for r in a}) > len(a) // 2  # and the samples differ from each other
    summary = json.loads((tmp_path / "a.jsonl.summary.json").read_text())
    for name in ("reward", "digit_alignment"):
        assert summary[name]["mean"] == pytest.approx(sum(r[name] for r in a) / len(a)) and summary[name]["n"] == len(a)
    assert "prompts x 2 samples" in out and "reward=compressibility" in out and "digit_alignment" in out


def test_genevals_tasks_and_their_mean_on_a_detector_that_sees_two_cats(tmp_path):
    from tests.test_geneval import save_two_cats_detector, write_metadata
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_clip, save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    metadata = write_metadata(tmp_path / "meta.jsonl")
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith(("reward", "model.prompts"))]
    run_rlft("benchmark", *overrides, "model.max_sequence_length=8", "reward=geneval", "reward.score=correct",
             f"reward.detector_path={save_two_cats_detector(tmp_path / 'm2f')}",
             f"reward.clip_path={save_tiny_clip(tmp_path / 'clip')}", f"reward.metadata=[{metadata}]",
             "model.prompts.train=[a photo of a cat]",
             "model.prompts.eval=[a photo of a cat,a photo of two cats,a photo of three cats]",
             "benchmark.per_prompt=2", f"benchmark.out={tmp_path}/geneval.jsonl", cwd=tmp_path)
    s = json.loads((tmp_path / "geneval.jsonl.summary.json").read_text())["reward"]
    # Two cats in every image: "a cat" holds for the benchmark (at least one), "two cats" holds,
    # "three cats" does not. single_object 1, counting 1/2; GenEval's overall: their mean.
    assert s["groups"] == {"counting": 0.5, "single_object": 1.0} and s["mean_over_groups"] == 0.75
    assert s["mean"] == pytest.approx(4 / 6) and s["n"] == 6


def test_scores_go_into_the_scored_run_and_are_never_overwritten(tiny_model_dir, tmp_path):
    """A run's checkpoint is scored into the run's own directory, with the checkpoint, its epoch and
    the config recorded; a second benchmark to the same file is refused (exit 2) until overwrite=true."""
    run = tmp_path / "run"
    run_rlft(f"model.pretrained={tiny_model_dir}", "policy.num_steps=2", "algorithm.epochs=1", "data.samples_per_epoch=4",
             "algorithm.sample_batch_size=4", "algorithm.train_batch_size=2", f"hydra.run.dir={run}", cwd=tmp_path)
    ckpt = run / "checkpoints" / "last.ckpt"
    args = ["benchmark", f"model.pretrained={tiny_model_dir}", "policy.num_steps=2", "benchmark.per_prompt=1",
            f"ckpt_path={ckpt}"]
    run_rlft(*args, cwd=tmp_path)
    out = run / "benchmark" / "compressibility_last.jsonl"
    summary = json.loads(out.with_name(out.name + ".summary.json").read_text())
    assert summary["scored"]["checkpoint"] == str(ckpt.resolve()) and summary["scored"]["epoch"] == 0
    assert f"ckpt_path={ckpt}" in summary["scored"]["overrides"] and summary["reward"]["n"] == len(read(out))
    assert "num_steps: 2" in out.with_name(out.name + ".config.yaml").read_text()
    before = out.read_text()
    again = rlft(*args, cwd=tmp_path)
    assert again.returncode == 2 and "benchmark.out=" in again.stderr and "benchmark.overwrite=true" in again.stderr
    assert out.read_text() == before
    run_rlft(*args, "benchmark.overwrite=true", cwd=tmp_path)
