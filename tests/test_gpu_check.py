"""`rlft.tools.gpu_check`: random weights of the real architectures through the real training code.
On the CPU, one epoch of a tiny pipeline's architecture with random weights runs through it; the
GPU check itself runs with `pytest -m gpu` where CUDA is (skipped elsewhere)."""

import pytest
import torch

from rlft.tools.gpu_check import CASES, check, run_epoch
from tests.tiny_sd import save_tiny_sd3


def test_one_random_weight_epoch_runs_through_training_on_the_cpu(tmp_path):
    model = save_tiny_sd3(tmp_path / "sd3")
    planned, seconds, cfg = run_epoch(
        ["model=sd3", f"model.pretrained={model}", "model.dtype=float32", "algorithm=grpo", "reward=compressibility",
         "algorithm.epochs=1", "algorithm.group_size=2", "data.samples_per_epoch=4", "algorithm.sample_batch_size=2",
         "algorithm.train_batch_size=2", "model.num_steps=2", "algorithm.eval_every_n_epochs=0", "trainer.logger=false",
         "model.prompts.train=[a cat]", "model.prompts.eval=[a dog]"],
        {"transformer": {"num_layers": 2}}, "cpu")
    assert seconds > 0 and planned.total > 0 and cfg.data.samples_per_epoch == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_plan_is_within_a_fifth_of_the_gpu_peak(name):
    row = check(name, *CASES[name])
    print(row)
    assert 0.8 <= row["measured_over_planned"] <= 1.2, row
