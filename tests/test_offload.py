"""`algorithm.offload` and `algorithm.storage_dtype`: where an epoch's trajectories are kept between
sampling and the update, and in which dtype; an offload the host cannot hold is refused by name."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rlft.memory.host as host
from rlft.algorithms.pipeline import OnlineRL
from rlft.tools.tensorboard import read_scalars
from rlft.types import PromptEmbeds, Trajectories

ROOT = Path(__file__).parents[1]
RUN = ["trainer.max_epochs=2", "data.samples_per_epoch=8", "algorithm.sample_batch_size=4", "algorithm.train_batch_size=4",
       "policy.num_steps=3", "algorithm.eval_every_n_epochs=0"]


def chunk(batch: int = 2) -> Trajectories:
    return Trajectories(prompts=["a"] * batch, prompt_embeds=PromptEmbeds(torch.randn(batch, 3, 4)),
                        latents=torch.randn(batch, 2, 1, 4, 4), next_latents=torch.randn(batch, 2, 1, 4, 4),
                        log_probs=torch.randn(batch, 2), timesteps=torch.ones(batch, 2), images=torch.rand(batch, 1, 8, 8),
                        final_latents=torch.randn(batch, 1, 4, 4))


def test_store_keeps_the_latents_in_the_storage_dtype_and_the_rest_as_it_was():
    part = chunk()
    log_probs, embeds = part.log_probs, part.prompt_embeds.tokens
    part.store("cpu", torch.bfloat16)
    assert part.latents.dtype == part.next_latents.dtype == part.final_latents.dtype == torch.bfloat16
    assert part.log_probs is log_probs and torch.equal(part.prompt_embeds.tokens, embeds)
    assert part.images.dtype == torch.float32
    assert host.trajectory_bytes(chunk(), torch.bfloat16) == (2 * 2 * 16 * 2) * 2 + 2 * 16 * 2 + 2 * 64 * 4 + 2 * 12 * 4


def test_an_offload_the_host_cannot_hold_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(host, "available_host_bytes", lambda: 1000)
    module = SimpleNamespace(offload=True, storage_dtype=None, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match=r"algorithm.offload=true keeps this epoch's trajectories in host memory: "
                                           r"about .* GiB a process, and this machine has 0.0 GiB available"):
        OnlineRL.store_chunk(module, chunk(), range(0, 2), 64)


def train(run_dir: Path, *overrides: str) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "rlft", *RUN, *overrides, f"hydra.run.dir={run_dir}"],
                            cwd=run_dir.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return run_dir


def lora(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if "lora" in k}


def test_offloaded_trajectories_train_exactly_as_kept_ones_and_bfloat16_storage_rounds(tmp_path):
    kept, offloaded = train(tmp_path / "kept"), train(tmp_path / "offloaded", "algorithm.offload=true")
    a, b = read_scalars(kept), read_scalars(offloaded)
    for tag in (t for t in a if not t.startswith("time/")):
        assert a[tag] == b[tag], tag
    assert all(torch.equal(v, lora(offloaded)[k]) for k, v in lora(kept).items())
    rounded = lora(train(tmp_path / "bf16", "algorithm.storage_dtype=bfloat16"))
    assert any(not torch.equal(v, rounded[k]) for k, v in lora(kept).items())  # the update saw rounded latents
