"""trainer=fsdp2 (Lightning's ModelParallelStrategy: torch's FSDP2) on two gloo processes on the CPU
against one process with the same global batch: the denoiser sharded block by block, LoRA inside.
Every logged metric agrees to 1e-4 and the weights to the tolerances test_ddp.py explains (Adam
turns the float-order noise of near-zero gradient elements into step differences); one LoRA
export and one checkpoint, of the trained weights only, are written."""

import math
import subprocess
import sys

import pytest
import torch

from rlft.tools.tensorboard import read_scalars
from tests.test_ddp import ALL_TIMESTEPS, TINY, assert_same_run, two_and_one
from tests.test_end_to_end import run_rlft

ONE = ["algorithm.sample_batch_size=8", "algorithm.train_batch_size=4"]
TWO = ["algorithm.sample_batch_size=4", "algorithm.train_batch_size=2"]  # per process


def sharded_and_one(tmp_path, model_dir, common: list[str]):
    one, two = two_and_one(tmp_path, model_dir, common, ONE, TWO, parallel=("trainer=fsdp2", "trainer.devices=2"))
    assert (two / "lora" / "pytorch_lora_weights.safetensors").is_file()
    return one, two


@pytest.mark.slow  # ~40 s each (three runs' worth of processes): run by .ci/run after the default suite
def test_ppo_sharded_equals_one_process(tiny_model_dir, tmp_path):
    one, two = sharded_and_one(tmp_path, tiny_model_dir, [
        ALL_TIMESTEPS, "trainer.max_epochs=2", "algorithm.num_inner_epochs=2", "algorithm.gradient_accumulation_steps=2",
        "algorithm.clip_range=1e-3", "algorithm.eval_every_n_epochs=1"])
    assert_same_run(one, two, must_move=["train/approx_kl", "train/grad_norm", "rollout/advantage_absmean"],
                    weight_atol=1e-3)


@pytest.mark.slow
def test_grpo_with_its_kl_reference_sharded_equals_one_process(tiny_model_dir, tmp_path):
    one, two = sharded_and_one(tmp_path, tiny_model_dir, [
        "algorithm=grpo", ALL_TIMESTEPS, "algorithm.group_size=4", "algorithm.kl_weight=0.1", "trainer.max_epochs=2",
        "algorithm.gradient_accumulation_steps=2", "algorithm.clip_range=1e-3"])
    assert_same_run(one, two, must_move=["train/kl", "train/grad_norm", "rollout/advantage_absmean"], weight_atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["nft", "awm"])
def test_flow_algorithms_with_a_second_adapter_sharded_equal_ddp(algorithm, tiny_flow_model_dir, tmp_path):
    """NFT and AWM draw each micro-batch's forward-process noise on the rank that trains it: with
    another number of processes the draws differ (equal in distribution only), so the sharded run
    is compared with DDP on the same 2 processes. NFT samples with its old adapter, AWM keeps an EMA
    adapter: both are second LoRA adapters, sharded with the policy's."""
    common = [f"model.pretrained={tiny_flow_model_dir}", *TINY, "model=digits_flow", f"algorithm={algorithm}",
              "algorithm.group_size=4", "trainer.max_epochs=2", ALL_TIMESTEPS, *TWO, "trainer.devices=2",
              *(["algorithm.train_timesteps=2"] if algorithm == "awm" else [])]
    for name, strategy in (("ddp", "trainer.strategy=ddp"), ("fsdp2", "trainer=fsdp2")):
        run_rlft(*common, strategy, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
    assert_same_run(tmp_path / "ddp", tmp_path / "fsdp2", must_move=["train/grad_norm", "rollout/advantage_absmean"],
                    weight_atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.devices=1"], "trainer.devices=1 is invalid: must be > 1 with trainer=fsdp2"),
    (["algorithm=seiko"], "algorithm='seiko' is invalid: does not train sharded yet"),
    (["policy.lora_rank=null"], "full fine-tuning under trainer=fsdp2 is not supported yet"),
    (["policy.compile=true"], "policy.compile=True is invalid: must be false with trainer=fsdp2"),
    (["trainer.strategy=fsdp"], "is not supported by the algorithms; shard the model with trainer=fsdp2"),
])
def test_what_fsdp2_cannot_do_is_refused_at_composition(tmp_path, overrides, message):
    base = ["trainer=fsdp2"] if overrides != ["trainer.strategy=fsdp"] else ["trainer.devices=2"]
    result = subprocess.run([sys.executable, "-m", "rlft", *base, "trainer.accelerator=cpu", *overrides], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]


@pytest.mark.slow
def test_gradient_checkpointing_sharded_gives_what_ddp_without_it_gives(tmp_path):
    """SD3's transformer (tiny) recomputing its blocks' activations in backward under FSDP2, against
    DDP on the same 2 processes storing them: the same metrics and weights. (work/unet_evals does
    not count the per-block recomputation of model.gradient_checkpointing, on either: only SEIKO's
    checkpointed chain is counted so far.)"""
    from tests.tiny_sd import save_tiny_sd3

    model = save_tiny_sd3(tmp_path / "sd3")
    common = ["model=sd3", f"model.pretrained={model}", "model.dtype=float32", "policy.num_steps=3", "trainer.accelerator=cpu",
              "reward=compressibility", "data.samples_per_epoch=8", ALL_TIMESTEPS, "trainer.max_epochs=2", *TWO,
              "algorithm.gradient_accumulation_steps=2", "trainer.devices=2", "model.prompts.train=[a_cat,a_dog]",
              "model.prompts.eval=[a_cow]"]
    runs = {"ddp": ["trainer.strategy=ddp", "model.gradient_checkpointing=false"],
            "fsdp2": ["trainer=fsdp2", "model.gradient_checkpointing=true"]}
    for name, extra in runs.items():
        run_rlft(*common, *extra, f"hydra.run.dir={tmp_path / name}", cwd=tmp_path)
    ddp, fsdp2 = read_scalars(tmp_path / "ddp"), read_scalars(tmp_path / "fsdp2")
    for tag in (t for t in ddp if not t.startswith("time/")):
        assert len(ddp[tag]) == len(fsdp2[tag]) and all(
            math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5) for (_, x), (_, y) in zip(ddp[tag], fsdp2[tag])), tag
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for n in runs)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6, msg=key)
