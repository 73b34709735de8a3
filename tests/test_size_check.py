"""Stable Diffusion at real size (slow: ~5 minutes, ~6 GB of disk, ~8 GB of memory): one PPO
and one SEIKO epoch through the CLI on random-weight SD1.5-architecture models. Checkpoints
hold the trained weights only; peak memory stays within 1.5x the frozen weights."""

import pytest
import torch

from rlft.tools.size_check import TARGET_CHECKPOINT_MB, TARGET_PEAK_OVER_WEIGHTS, size_check, size_table


@pytest.mark.slow
def test_sd15_size_checkpoints_and_peak_memory(tmp_path):
    rows = size_check(tmp_path)
    print(size_table(rows))
    for name, row in rows.items():
        assert row["checkpoint_files"] == ["last.ckpt"], name
        assert row["peak_over_weights"] <= TARGET_PEAK_OVER_WEIGHTS, (name, row)
    assert rows["ppo"]["checkpoint_mb"] <= TARGET_CHECKPOINT_MB
    state = torch.load(tmp_path / "run_seiko" / "checkpoints" / "last.ckpt", weights_only=True)
    features_mb = state["rlft"]["feedback_features"].nbytes / 2**20
    assert rows["seiko"]["checkpoint_mb"] <= TARGET_CHECKPOINT_MB + features_mb
    assert not any(k.startswith(("policy.model", "ensemble.backbone")) or "lora" not in k
                   for k in state["state_dict"] if k.startswith("policy."))
