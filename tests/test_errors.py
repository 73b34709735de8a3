"""A wrong setting, as a user meets it on the command line: one line that names the key and what is
valid, exit code 2, no traceback (HYDRA_FULL_ERROR=1 shows it), and no run directory left behind."""

import os
import subprocess
import sys
from pathlib import Path


def rlft(*args: str, cwd: Path, full_error: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(Path(__file__).parents[1])
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run([sys.executable, "-m", "rlft", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_a_wrong_value_is_one_line_and_leaves_no_run_directory(tmp_path):
    run = tmp_path / "outputs" / "day" / "run"
    result = rlft("algorithm.clip_range=-0.1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "rlft: algorithm.clip_range=-0.1 is invalid: must be in (0, 1)"
    assert "Traceback" not in result.stdout + result.stderr
    assert not run.exists() and not run.parent.exists()  # its day's folder too, which held only it


def test_the_traceback_is_there_with_hydra_full_error(tmp_path):
    result = rlft("algorithm.clip_range=-0.1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, full_error=True)
    assert result.returncode != 0 and "Traceback" in result.stderr
    assert "algorithm.clip_range=-0.1 is invalid: must be in (0, 1)" in result.stderr


def test_missing_weights_are_one_line_naming_the_setting(tmp_path):
    result = rlft("model=stable_diffusion", "model.pretrained=/nowhere", "model.dtype=float32",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("rlft: model.pretrained='/nowhere' is not a Stable Diffusion pipeline directory: missing ")
    assert "Traceback" not in result.stdout + result.stderr


def test_a_resumed_runs_directory_is_kept_when_a_setting_is_wrong(tmp_path):
    """A directory that holds more than Hydra's config and the log (a checkpoint) is never removed."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    result = rlft("algorithm.clip_range=-0.1", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 2 and (run / "checkpoints" / "last.ckpt").exists()
    assert f"(run directory: {run})" in result.stderr.strip().splitlines()[-1]


def test_a_sharding_error_names_the_setting_the_user_set_and_values_that_work(tmp_path):
    """data.samples_per_epoch=12 under GRPO (micro-batches of 8 by its config): the user set the samples,
    so the samples are named, with the config's micro-batch said to be not set, and values of each that fit."""
    run = f"hydra.run.dir={tmp_path / 'outputs' / 'run'}"
    result = rlft("data.samples_per_epoch=12", "algorithm=grpo", run, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "rlft: data.samples_per_epoch=12 is invalid: must be a multiple of algorithm.train_batch_size=8 (not set: this "
        "config's value), so that each process's shard is whole micro-batches: set data.samples_per_epoch=8 or 16, "
        "or algorithm.train_batch_size=3 or 4 or 6 or 12")
    # The micro-batch set on the command line is the one named.
    result = rlft("algorithm.train_batch_size=5", run, cwd=tmp_path)
    assert result.stderr.strip().splitlines()[-1].startswith(
        "rlft: algorithm.train_batch_size=5 is invalid: must divide data.samples_per_epoch=64: set algorithm.train_batch_size=")
