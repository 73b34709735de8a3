"""The real entry points, run as a user runs them, on a tiny model for a few steps."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlft.models.digits import DigitClassifier, load_digits_model
from rlft.diffusion.policy import DiffusionPolicy
from rlft.tools.tensorboard import read_scalars
from tests.manual import undocumented_metrics

TINY_RUN = [
    "trainer.max_epochs=2",
    "data.samples_per_epoch=8",
    "algorithm.sample_batch_size=4",
    "algorithm.train_batch_size=4",
    "algorithm.gradient_accumulation_steps=2",
    "policy.num_steps=3",
    "algorithm.timestep_fraction=1.0",  # every timestep trained (the default's 0.25 would train 1 of 3): the counts below
]
REQUIRED_METRICS = [
    "reward/mean", "reward/std", "train/loss", "train/approx_kl", "train/clipfrac",
    "train/ratio_mean", "train/log_ratio_absmax", "train/approx_kl_first_update", "oracle/queries",
]


def run_rlft(*args: str, module: str = "rlft", cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """`python -m rlft ARGS` in `cwd`; the tests' own rewards (tests.*) importable; exit code `expect`."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ppo_run_logs_finite_metrics_and_checkpoints(tiny_model_dir, tmp_path, reduction):
    run_dir = tmp_path / "run"
    result = run_rlft(f"model.pretrained={tiny_model_dir}", f"reduction={reduction}", *TINY_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "litlogger" not in result.stdout + result.stderr  # Lightning's advertisement at every start, filtered

    scalars = read_scalars(run_dir)
    missing = [m for m in REQUIRED_METRICS if m not in scalars]
    assert not missing, f"missing metrics {missing}; logged {sorted(scalars)}"
    for tag, series in scalars.items():
        assert all(math.isfinite(v) for _, v in series), f"{tag} has a non-finite value: {series}"
    assert [step for step, _ in scalars["reward/mean"]] == [0, 1]  # one point per RL epoch
    # First update of every epoch: the log-prob recomputed with unchanged weights is the stored one.
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    assert all(v == 0 for _, v in scalars["train/clipfrac_first_update"])
    assert scalars["oracle/queries"][-1][1] == 16
    # 8 samples x 3 steps x 2 (CFG) an epoch sampled (forward: 1), then trained on (3): 48 + 144
    assert [v for _, v in scalars["work/unet_evals"]] == [192, 384]
    assert "hp/final_reward_mean" in scalars
    undocumented = undocumented_metrics(scalars)
    assert not undocumented, f"docs/reference/metrics.md lacks {undocumented}"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "clip_range" in (run_dir / "hparams.yaml").read_text()
    # One line per epoch in the run's log (what a cluster job's log shows while it runs).
    lines = [line.split("] - ", 1)[1] for line in (run_dir / "cli.log").read_text().splitlines() if "] - epoch " in line]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], lines
    assert re.fullmatch(r"epoch 2/2: reward -?\d\.\d{4} ± \d\.\d{4}, eval -?\d\.\d{4}, approx_kl \S+, clipfrac \d\.\d{3}, "
                        r"queries 16, \d+\.\d s", lines[1]), lines[1]


def test_sweep_names_runs_by_their_overrides_and_compare_reads_it(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_rlft(
        "-m", "algorithm.clip_range=1e-4,1e-3", "reduction=mean,sum", "seed=0,1", f"model.pretrained={tiny_model_dir}",
        *TINY_RUN, "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
    )
    runs = sorted({p.parent.relative_to(sweep_dir).as_posix() for p in sweep_dir.glob("*/*/events.out.tfevents.*")})
    assert len(runs) == 8, runs
    for clip in ("0.0001", "0.001"):  # Hydra writes the swept floats in their normal form
        for reduction in ("mean", "sum"):
            for seed in (0, 1):
                assert sum(f"algorithm.clip_range={clip}" in r and f"reduction={reduction}" in r and r.endswith(f"/seed={seed}")
                           for r in runs) == 1, runs

    out = run_rlft("compare", str(sweep_dir), "--metric", "reward/mean", "--metric", "train/clipfrac", cwd=tmp_path).stdout
    table = (sweep_dir / "compare" / "summary.md").read_text()
    assert table in out
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 4 * 2 and all("| 2 |" in row for row in rows), table  # 4 configurations x 2 metrics, 2 seeds each
    assert (sweep_dir / "compare" / "summary.csv").read_text().count("\n") == 1 + 8
    for png in ("reward_mean.png", "train_clipfrac.png"):
        assert (sweep_dir / "compare" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_failed_job_does_not_lose_the_others(tiny_model_dir, tmp_path):
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rlft", "-m", "algorithm.clip_range=2,1e-3", f"model.pretrained={tiny_model_dir}", *TINY_RUN,
         "trainer.max_epochs=1", f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0 and "algorithm.clip_range=2 is invalid" in result.stderr
    assert list(sweep_dir.glob("algorithm=ppo,algorithm.clip_range=0.001,*/seed=0/events.out.tfevents.*"))


def test_resume_from_last_checkpoint_continues_the_epochs(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = [f"model.pretrained={tiny_model_dir}", *TINY_RUN, f"hydra.run.dir={run_dir}"]
    run_rlft(*common, "trainer.max_epochs=1", cwd=tmp_path)
    run_rlft(*common, "trainer.max_epochs=2", f"ckpt_path={run_dir}/checkpoints/last.ckpt", cwd=tmp_path)
    steps = [step for step, _ in read_scalars(run_dir)["reward/mean"]]
    assert steps == [0, 1]
    assert read_scalars(run_dir)["oracle/queries"][-1][1] == 16  # restored, not restarted at 0

    # rlft sample: the base model (default), then the run's checkpoint.
    sample = ["sample", f"model.pretrained={tiny_model_dir}", "policy.num_steps=3", "sample.per_prompt=1"]
    run_rlft(*sample, f"sample.out={tmp_path}/base.png", cwd=tmp_path)
    run_rlft(*sample, f"ckpt_path={run_dir}/checkpoints/last.ckpt", f"sample.out={tmp_path}/run.png", cwd=tmp_path)
    assert (tmp_path / "base.png").stat().st_size > 0 and (tmp_path / "run.png").stat().st_size > 0


def test_pretrain_commands_write_loadable_models(tmp_path):
    unet_dir, classifier_dir = tmp_path / "unet", tmp_path / "classifier"
    run_rlft("pretrain", "pretrain.max_steps=3", f"output_dir={unet_dir}", f"hydra.run.dir={tmp_path / 'log1'}", cwd=tmp_path)
    # python -m rlft.pretrain as well as rlft pretrain
    run_rlft("pretrain=classifier", "pretrain.max_steps=3", f"output_dir={classifier_dir}", f"hydra.run.dir={tmp_path / 'log2'}",
             module="rlft.pretrain", cwd=tmp_path)
    policy = DiffusionPolicy(**load_digits_model(str(unet_dir)), num_steps=2)
    assert policy.sample(["a handwritten 4"]).images.shape == (1, 1, 16, 16)
    assert DigitClassifier.from_pretrained(str(classifier_dir))(policy.sample(["4"]).images).shape == (1, 10)


def test_help_lists_groups_and_options(tmp_path):
    out = run_rlft("--help", cwd=tmp_path).stdout
    for line in ("algorithm: awm, ddpo_sf, grpo, nft, ppo, rwr, seiko", "reduction: mean, sum", "reward: aesthetic, clipscore, compressibility, digit_alignment, ensemble, geneval, hpsv2, http, imagereward, incompressibility, multi, ocr, pickscore, vlm_judge"):
        assert line in out, out
    # algorithm/base holds the keys the algorithms extend: not a choice; pretrain is `rlft pretrain`'s
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "algorithm/base" not in groups and "pretrain:" not in groups, groups
    assert "pretrain: classifier, unet, unet_flow" in run_rlft("pretrain", "--help", cwd=tmp_path).stdout


def test_subcommands_reach_their_tools(tmp_path):
    assert "usage: rlft compare" in run_rlft("compare", "--help", cwd=tmp_path).stdout
    assert "usage: rlft plot" in run_rlft("plot", "--help", cwd=tmp_path).stdout
    assert "sample:" in run_rlft("sample", "--cfg", "job", cwd=tmp_path).stdout  # conf/sample.yaml's key
    assert "speed:" in run_rlft("speed", "--cfg", "job", cwd=tmp_path).stdout  # conf/speed.yaml's key
    assert "benchmark:" in run_rlft("benchmark", "--cfg", "job", cwd=tmp_path).stdout  # conf/benchmark.yaml's key


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_flow_model_runs_ppo_on_its_sde_window_and_seiko(tiny_flow_model_dir, tmp_path, reduction):
    """model=digits_flow through the CLI: PPO on a 2-of-3-step SDE window (the stored, trained
    steps) and SEIKO through the flow sampler, every metric finite, ratio 1 at each first update."""
    flow = ["model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", f"reduction={reduction}"]
    run_dir = tmp_path / "ppo"
    run_rlft(*flow, *TINY_RUN, "policy.sde_window=[0,2]", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = read_scalars(run_dir)
    for tag, series in scalars.items():
        assert all(math.isfinite(v) for _, v in series), f"{tag} has a non-finite value: {series}"
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])
    assert [step for step, _ in scalars["reward/mean"]] == [0, 1]

    from tests.test_seiko import TINY_SEIKO

    run_dir = tmp_path / "seiko"
    run_rlft(*flow, *TINY_SEIKO, "model.reward_feature_dim=64", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = read_scalars(run_dir)
    assert all(math.isfinite(v) for tag in ("train/kl", "train/reward_model", "eval/oracle_reward") for _, v in scalars[tag])
    assert scalars["oracle/queries"][-1][1] == 24


FAMILY_RUN = ["trainer.max_epochs=2", "data.samples_per_epoch=8", "algorithm.sample_batch_size=4",
              "algorithm.train_batch_size=4", "policy.num_steps=3"]


def finite_and_documented(run_dir) -> dict:
    scalars = read_scalars(run_dir)
    for tag, series in scalars.items():
        assert all(math.isfinite(v) for _, v in series), f"{tag} has a non-finite value: {series}"
    undocumented = undocumented_metrics(scalars)
    assert not undocumented, f"docs/reference/metrics.md lacks {undocumented}"
    assert [step for step, _ in scalars["reward/mean"]] == [0, 1]
    assert scalars["oracle/queries"][-1][1] == 16
    return scalars


def optimizer_steps(run_dir) -> int:
    import torch

    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return int(next(iter(checkpoint["optimizer_states"][0]["state"].values()))["step"])


@pytest.mark.parametrize("family", ["ddim", "flow"])
def test_grpo_runs_cfg_free_on_a_timestep_fraction_or_an_sde_window_with_its_kl(tiny_model_dir, tiny_flow_model_dir,
                                                                                 tmp_path, family):
    # DDIM: 2 of the 3 steps of each trajectory trained, no guidance; flow: the 2 steps of the SDE window [0, 2)
    model = [f"model.pretrained={tiny_model_dir}", "algorithm.timestep_fraction=0.67", "policy.guidance_scale=1"]
    if family == "flow":
        model = ["model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "policy.sde_window=[0,2]"]
    run_dir = tmp_path / "grpo"
    run_rlft(*model, "algorithm=grpo", *FAMILY_RUN, "algorithm.group_size=4", "algorithm.kl_weight=0.1",
             f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert all(abs(v) < 1e-6 for _, v in scalars["train/approx_kl_first_update"])  # ratio 1 before the first step
    assert scalars["train/kl"][0][1] >= 0 and scalars["train/kl"][1][1] > 0  # the policy has left the base
    assert optimizer_steps(run_dir) == 2 * 2  # epochs x micro-batches (each step: its 2 trained timesteps)


def test_ddpo_sf_takes_one_optimizer_step_per_batch(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "sf"
    run_rlft(f"model.pretrained={tiny_model_dir}", "algorithm=ddpo_sf", *FAMILY_RUN, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert "train/loss" in scalars and "train/clipfrac" not in scalars
    assert optimizer_steps(run_dir) == 2  # two epochs, one step each (2 micro-batches x 3 timesteps accumulated)


def test_rwr_sparse_keeps_the_top_quantile(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "rwr"
    run_rlft(f"model.pretrained={tiny_model_dir}", "algorithm=rwr", *FAMILY_RUN, "algorithm.weighting=sparse",
             "algorithm.quantile=0.25", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    # 2 of the 8 samples weigh 1, the rest 0: an effective sample size of 2 / 8
    assert [v for _, v in scalars["train/weight_ess_fraction"]] == [0.25, 0.25]


def test_nft_trains_a_flow_model_cfg_free(tiny_flow_model_dir, tmp_path):
    run_dir = tmp_path / "nft"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=nft", *FAMILY_RUN,
             "algorithm.group_size=4", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert all(v > 0 for tag in ("train/positive_loss", "train/negative_loss") for _, v in scalars[tag])
    assert 0 <= scalars["train/optimality_mean"][0][1] <= 1
    assert optimizer_steps(run_dir) == 2 * 2  # epochs x micro-batches (each step: its 3 timesteps)


def test_tensorboard_opens_on_the_reward(tiny_model_dir, tmp_path):
    """The Custom Scalars tab's layout is in the run's events: the reward, its spread, KL and clipping, time."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.custom_scalar import layout_pb2

    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    run_dir = tmp_path / "day" / "12-00-00"
    out = run_rlft(f"model.pretrained={tiny_model_dir}", *TINY_RUN, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    # The start line's command names the run by its directory (pointed at the run itself, TensorBoard names it ".").
    command = re.search(r"\(tensorboard --logdir (\S+):", out.stdout + out.stderr).group(1)
    assert list(EventMultiplexer().AddRunsFromDirectory(command).Runs()) == ["12-00-00"]
    layouts = []
    for events in run_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "custom_scalars":
                    layouts.append(layout_pb2.Layout.FromString(value.tensor.string_val[0]))
    assert len(layouts) == 1, layouts
    charts = {chart.title: chart for category in layouts[0].category for chart in category.chart}
    assert list(charts["reward (training batch, held-out evaluation)"].multiline.tag)[:2] == ["reward/mean", "eval/oracle_reward"]
    spread = charts["reward's spread in the batch"].margin.series[0]
    assert (spread.value, spread.lower, spread.upper) == ("reward/mean", "reward/min", "reward/max")
    assert {"train/approx_kl$", "train/clipfrac$"} <= set(charts["KL and clipping"].multiline.tag)
