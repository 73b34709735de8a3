"""rlft speed runs on a tiny model and reports every ratio."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from rlft.tools.speed import native_bfloat16
from tests.test_end_to_end import run_rlft


@pytest.mark.slow  # ~75 s: run by .ci/run after the default suite
def test_bench_writes_the_ratios(tiny_model_dir, tmp_path):
    run = tmp_path / "speed"
    out = run_rlft("speed", f"model.pretrained={tiny_model_dir}", "speed.repeats=1", "speed.samples=4", "policy.num_steps=2",
                   "algorithm.train_batch_size=2", "algorithm.timestep_fraction=1.0", "speed.trials=true", "policy.compile={backend:eager}", f"hydra.run.dir={run}",
                   cwd=tmp_path).stdout
    result = json.loads((run / "speed.json").read_text())
    assert result["machine"] and f"on {result['machine']}" in out  # which CPU (or GPU) the timings came from
    for name in ("sample", "ppo_train", "seiko_step"):
        assert result[f"{name}_ratio"] > 0 and result[f"{name}_bare_s"] > 0
    assert result["peak_rss_mb"] > 0 and "outside UNet" in out and "ms/UNet eval" in out
    # Work by hand: 4 samples x 2 steps x 2 (CFG) forwards; PPO's update trains each of them (x 3).
    assert result["sample_unet_evals"] == 4 * 2 * 2
    assert result["ppo_train_unet_evals"] == 4 * 2 * 2 * 3
    assert result["seiko_step_unet_evals"] > 2 * 2 * 2 * 3  # 2 prompts, 2 steps with grad, CFG; + recompute, reference
    assert result["sample_ms_per_unet_eval"] == 1000 * result["sample_s"] / result["sample_unet_evals"]
    # CFG's unconditional branch without gradient: timed beside the former batched-and-detached call; it keeps
    # the conditional branch's activations only (about half: the batched call keeps both branches').
    assert result["cfg_split_ratio"] > 0 and result["cfg_split_train_s"] > 0
    assert 0.3 < result["cfg_split_saved_ratio"] < 0.7, result["cfg_split_saved_ratio"]
    assert "activations kept for backward" in (run / "speed.md").read_text()
    trade = result["memory_trade"]  # each setting measured in its own process
    assert {m["micro_batch"] for m in trade if m["workload"] == "ppo"} == {4, 2, 1}
    assert any(m.get("unet_checkpointing") for m in trade) and {m.get("chain_checkpointing") for m in trade} >= {True, False}
    assert all(m["seconds"] > 0 and m["peak_above_mb"] >= 0 for m in trade)
    assert "speed for memory" in out
    # policy.compile (here with the eager backend: the code path, not inductor's minutes): ratios, compile time, a run's projection.
    for name in ("sample", "ppo_train"):
        assert result[f"{name}_compiled_ratio"] > 0 and result[f"{name}_compile_s"] >= 0
        per_call = result[f"{name}_compiled_s"] / result[f"{name}_compiled_ratio"]  # the eager loop's time
        cfg = OmegaConf.load(run / ".hydra" / "config.yaml").algorithm
        calls = cfg.epochs * 64 / 4  # epochs x samples / speed.samples: an update per epoch's samples
        assert result[f"{name}_compiled_run_ratio"] == pytest.approx(
            (calls * result[f"{name}_compiled_s"] + result[f"{name}_compile_s"]) / (calls * per_call))
    assert "policy.compile" in out
    # compile=auto's threshold: compile time x the run's work over the time the run saves, from the same figures
    calls = {name: cfg.epochs * 64 / 4 for name in ("sample", "ppo_train")}
    eager = {name: result[f"{name}_compiled_s"] / result[f"{name}_compiled_ratio"] for name in calls}
    saved = sum(calls[n] * (eager[n] - result[f"{n}_compiled_s"]) for n in calls)
    work = sum(calls[n] * result[f"{n}_unet_evals"] for n in calls)
    compile_s = sum(result[f"{n}_compile_s"] for n in calls)
    expected = compile_s * work / saved if saved > 0 else float("inf")
    assert result["compile_break_even_unet_evals"] == pytest.approx(expected) and "pays back above" in out
    # speed.md: docs/performance.md's table, one row per workload with its measured figures.
    rows = {line.split("|")[1].strip(): line for line in (run / "speed.md").read_text().splitlines() if line.startswith("| ")}
    for label, key in (("sampling", "sample"), ("PPO training", "ppo_train"), ("SEIKO step", "seiko_step")):
        assert f"| {result[f'{key}_ratio']:.2f} | {result[f'{key}_unet_evals']} |" in rows[label]
    for label, key in (("sampling", "sample"), ("PPO training", "ppo_train")):
        assert f"| {result[f'{key}_compiled_ratio']:.2f} |" in rows[label]
    trials = result["trials"]
    bf16 = {"sample_bf16_autocast_ratio", "ppo_train_bf16_autocast_ratio"} if native_bfloat16(torch.device("cpu")) else set()
    assert set(trials) == {"sample_channels_last_ratio", "ppo_train_channels_last_ratio", "sample_lora_merged_ratio"} | bf16
    assert all(v > 0 for v in trials.values())
