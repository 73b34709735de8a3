"""Checkpoints hold what training changes (rlft.run.checkpoints): the trainable weights, the RL
state and the base's fingerprint; a resume against another base, adapter or an old-format
checkpoint is refused with a message and leaves the checkpoint as it was."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.run.checkpoints import atomic_save
from rlft.models.fingerprint import base_fingerprint, same_base
from rlft.run.train import build, resume_path
from rlft.run.validation import ConfigError
from tests.conftest import save_tiny_model
from tests.test_config import compose_cfg
from tests.test_seiko import TINY_SEIKO

TINY_PPO = ["trainer.max_epochs=1", "data.samples_per_epoch=4", "algorithm.sample_batch_size=4",
            "algorithm.train_batch_size=4", "policy.num_steps=2", "algorithm.evaluation.samples_per_prompt=1"]


def fit(overrides, run_dir: Path):
    cfg = compose_cfg(overrides, output_dir=str(run_dir))
    module, data, trainer = build(cfg)
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.ckpt_path, trainer))
    return module


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def ppo_run(model_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("ppo")
    module = fit([f"model.pretrained={model_dir}", *TINY_PPO], run)
    return module, run


def test_a_checkpoint_holds_the_trained_weights_and_the_base_fingerprint_only(ppo_run):
    module, run = ppo_run
    assert sorted(p.name for p in (run / "checkpoints").glob("*.ckpt")) == ["last.ckpt"]  # one file per run
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    trainable = {f"policy.{n}" for n, p in module.policy.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable and all("lora" in k for k in trainable)
    assert checkpoint["rlft_base"]["fingerprint"]["digest"] == module.policy.base_fingerprint["digest"]
    assert checkpoint["rlft_base"]["adapter"]["lora_rank"] == 4


def test_seiko_checkpoints_its_heads_and_reference_adapter_but_not_the_backbone(model_dir, tmp_path):
    module = fit([*TINY_SEIKO, f"model.pretrained={model_dir}", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
                  "~model.reward_features.pretrained_model_name_or_path"], tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(state["state_dict"])
    assert any(k.startswith("ensemble.heads.") for k in keys) and "ensemble.reward_std" in keys
    assert not any(k.startswith("ensemble.backbone.") or "reference" in k for k in keys)
    assert {k for k in keys if k.startswith("policy.")} == {
        f"policy.{n}" for n, p in module.policy.named_parameters() if p.requires_grad}
    assert state["rlft"]["reference"]["kind"] == "adapter" and state["rlft"]["reference"]["weights"]


def test_the_same_base_is_its_files_and_dtype_wherever_it_lies(model_dir, tmp_path):
    parts = ("unet", "scheduler", "text_encoder")
    here = base_fingerprint(model_dir, parts, "float32")
    moved = tmp_path / "moved"
    shutil.copytree(model_dir, moved)
    (moved / "unet" / "notes.txt").write_text("")  # a file inside a component is part of the model
    assert same_base(here, base_fingerprint(model_dir, parts, "float32"))
    assert not same_base(here, base_fingerprint(model_dir, parts, "bfloat16"))
    assert not same_base(here, base_fingerprint(moved, parts, "float32"))
    (moved / "unet" / "notes.txt").unlink()
    (moved / "outputs").mkdir()  # a run directory beside the components is not
    assert same_base(here, base_fingerprint(moved, parts, "float32"))


def refused(overrides, run: Path) -> str:
    """Resume `run` with `overrides`: the error, and the checkpoint's bytes unchanged."""
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(ConfigError) as error:
        fit([*overrides, "trainer.max_epochs=2"], run)
    assert last.read_bytes() == before  # nothing lost
    return str(error.value)


def copy_run(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_resuming_on_another_base_model_is_refused_naming_both(ppo_run, model_dir, tmp_path):
    _, run = ppo_run
    other = tmp_path / "other_model"
    shutil.copytree(model_dir, other)
    config = other / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "beta_end": 0.02}))
    message = refused([f"model.pretrained={other}", *TINY_PPO], copy_run(run, tmp_path))
    assert "another base model" in message and str(other) in message and str(model_dir) in message


def test_resuming_with_another_lora_rank_is_refused(ppo_run, model_dir, tmp_path):
    _, run = ppo_run
    message = refused([f"model.pretrained={model_dir}", *TINY_PPO, "policy.lora_rank=2"], copy_run(run, tmp_path))
    assert "'lora_rank': 4" in message and "'lora_rank': 2" in message


def test_a_checkpoint_from_before_this_format_is_refused_and_kept(ppo_run, model_dir, tmp_path):
    _, run = ppo_run
    copy = copy_run(run, tmp_path)
    last = copy / "checkpoints" / "last.ckpt"
    old = torch.load(last, weights_only=False)
    del old["rlft_base"]
    torch.save(old, last)
    message = refused([f"model.pretrained={model_dir}", *TINY_PPO], copy)
    assert "written before" in message and "ckpt_path=null" in message


def test_a_write_killed_midway_leaves_the_previous_checkpoint_whole(tmp_path):
    """SIGKILL inside the write (the pickler calls back into Python): the old file stays."""
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "weights": torch.ones(1000)}, path)
    script = f"""
import os, signal, torch
from rlft.run.checkpoints import atomic_save
from rlft.models.fingerprint import base_fingerprint, same_base
class Bomb:
    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)
atomic_save({{"step": 2, "weights": torch.zeros(10**6), "bomb": Bomb()}}, {str(path)!r})
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 1 and torch.equal(saved["weights"], torch.ones(1000))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt", ".last.ckpt.partial"] or \
        sorted(p.name for p in tmp_path.iterdir()) == [".last.ckpt.partial", "last.ckpt"]
    atomic_save({"step": 3}, path)  # the next write replaces both
    assert torch.load(path, weights_only=True)["step"] == 3 and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
