"""Interrupt a run with a signal in the middle of an epoch (PPO) or a round (SEIKO), resume
it with the same command, and compare with an uninterrupted run of the same seed: the
metrics and the final weights match bitwise (CPU), and no oracle query is made twice."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlft.tools.tensorboard import read_scalars
from tests.conftest import save_tiny_model

ROOT = Path(__file__).parents[1]
PPO_RUN = [
    "trainer.max_epochs=3", "data.samples_per_epoch=8", "algorithm.sample_batch_size=4",
    "algorithm.train_batch_size=4", "algorithm.gradient_accumulation_steps=2", "policy.num_steps=3",
    "algorithm.eval_every_n_epochs=2", "algorithm.evaluation.samples_per_prompt=1",
]
SEIKO_RUN = [
    "algorithm=seiko", "algorithm.queries_per_round=[8,16]", "algorithm.epochs_per_round=2",
    "algorithm.truncation_steps=2", "algorithm.train_batch_size=4", "algorithm.ensemble_epochs=3",
    "algorithm.evaluation.samples_per_prompt=1", "data.samples_per_epoch=8", "policy.num_steps=3",
    "model.reward_feature_dim=4", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
    "~model.reward_features.pretrained_model_name_or_path",
]
EVAL_IMAGES = 10  # 10 held-out prompts x 1 sample: tells evaluation calls from oracle calls


def rlft(run_dir: Path, log: Path, *args: str, expect: int = 0, reward: str = "reward") -> subprocess.CompletedProcess:
    """`reward`: the config key of the reward that signals (reward.oracle under reward=ensemble)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    overrides = [*args, f"hydra.run.dir={run_dir}", f"{reward}._target_=tests.signalling_reward.SignallingReward",
                 f"+{reward}.log={log}", f"~{reward}.quality"]
    result = subprocess.run([sys.executable, "-m", "rlft", *overrides], cwd=run_dir.parent, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def assert_same_run(reference: Path, resumed: Path) -> None:
    ref, res = read_scalars(reference), read_scalars(resumed)
    tags = sorted(t for t in ref if not t.startswith("time/"))
    assert tags == sorted(t for t in res if not t.startswith("time/"))
    for tag in tags:
        assert ref[tag] == res[tag], f"{tag}: uninterrupted {ref[tag]} != resumed {res[tag]}"
    a = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    lora = [k for k in a["state_dict"] if "lora" in k]
    assert lora
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["rlft"]["oracle_queries"] == b["rlft"]["oracle_queries"]


def calls(log: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGUSR1"])
def test_ppo_interrupted_mid_epoch_resumes_exactly(model_dir, tmp_path, signum):
    common = [f"model.pretrained={model_dir}", *PPO_RUN]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common)

    run, log = tmp_path / "run", tmp_path / "run.log"
    # 2 chunks of 4 images per epoch: the 4th call is the second chunk of epoch 1.
    stopped = rlft(run, log, *common, "+reward.at_call=4", "+reward.batch_size=4", f"+reward.signum={signum}", expect=143)
    assert "stopped by a signal in epoch 1" in stopped.stdout + stopped.stderr
    assert read_scalars(run)["reward/mean"][-1][0] == 0  # epoch 1 was not logged: it is redone
    rlft(run, log, *common)  # the same command: ckpt_path=last resumes
    assert_same_run(tmp_path / "reference", run)
    # time/elapsed_s is carried across the resume: at the end it is the sum of every logged
    # epoch's sampling and training time, epoch 0's (before the interruption) included.
    scalars = read_scalars(run)
    epochs = sum(v for tag in ("time/sample_s", "time/train_s") for _, v in scalars[tag])
    assert [s for s, _ in scalars["time/elapsed_s"]] == [0, 1, 2]
    assert scalars["time/elapsed_s"][-1][1] == pytest.approx(epochs, rel=1e-5)


@pytest.mark.parametrize("algorithm,family", [("grpo", "ddim"), ("nft", "flow"), ("awm", "flow")])
def test_the_other_algorithms_resume_exactly_on_the_shared_pipeline(algorithm, family, tmp_path):
    """GRPO (grouped epochs, the base as KL reference), DiffusionNFT (its old adapter, EMA and step
    count, forward noise from the global RNG) and AWM (its EMA adapter, training times and noise)
    stopped mid-epoch and resumed."""
    model = save_tiny_model(tmp_path / "model", family)
    flow = ["model=digits_flow"] if family == "flow" else []
    times = ["algorithm.train_timesteps=2", "algorithm.timestep_fraction=1.0"] if algorithm == "awm" else []
    common = [*flow, f"model.pretrained={model}", f"algorithm={algorithm}", *PPO_RUN, "algorithm.group_size=4", *times]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common)
    run, log = tmp_path / "run", tmp_path / "run.log"
    rlft(run, log, *common, "+reward.at_call=4", "+reward.batch_size=4", "+reward.signum=SIGTERM", expect=143)
    rlft(run, log, *common)
    assert_same_run(tmp_path / "reference", run)


def test_seiko_interrupted_mid_round_and_mid_query_resumes_exactly(model_dir, tmp_path):
    common = [f"model.pretrained={model_dir}", *SEIKO_RUN]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common)

    # Mid-round: during epoch 1's evaluation (round 0's second fine-tuning epoch).
    run, log = tmp_path / "mid_round", tmp_path / "mid_round.log"
    rlft(run, log, *common, "+reward.at_call=3", f"+reward.batch_size={EVAL_IMAGES}", expect=143)
    rlft(run, log, *common)
    assert_same_run(tmp_path / "reference", run)

    # Mid-query: the signal arrives while the oracle scores round 1's 16 queries.
    run, log = tmp_path / "mid_query", tmp_path / "mid_query.log"
    rlft(run, log, *common, "+reward.at_call=1", "+reward.batch_size=16", expect=143)
    rlft(run, log, *common)
    assert_same_run(tmp_path / "reference", run)
    oracle_calls = [n for _, n in calls(log) if n != EVAL_IMAGES]
    assert oracle_calls == [8, 16], f"the oracle was asked {oracle_calls}: a paid query was repeated"
    assert len({pid for pid, _ in calls(log)}) == 2


def images_seen(log: Path, leave_out: int = EVAL_IMAGES) -> list[str]:
    """Digests of the images the reward saw, evaluation calls left out."""
    lines = [line.split() for line in Path(f"{log}.images").read_text().splitlines()]
    return [digest for n, digest in lines if int(n) != leave_out]


def test_ppo_killed_mid_epoch_pays_for_no_answer_twice(model_dir, tmp_path):
    """SIGKILL (no handler runs) as the second chunk of epoch 1 arrives at the reward: the
    first chunk's answer is on disk, and the resumed run reads it back instead of asking."""
    common = [f"model.pretrained={model_dir}", *PPO_RUN]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common)
    run, log = tmp_path / "run", tmp_path / "run.log"
    rlft(run, log, *common, "+reward.at_call=4", "+reward.batch_size=4", "+reward.signum=SIGKILL",
         "+reward.before=true", expect=-signal.SIGKILL)
    assert len(images_seen(log)) == 12  # epoch 0's 8 and epoch 1's first 4
    rlft(run, log, *common)
    seen = images_seen(log)
    assert len(seen) == len(set(seen)) == len(images_seen(tmp_path / "reference.log")) == 24, "an image was scored twice"
    assert_same_run(tmp_path / "reference", run)


def test_seiko_killed_between_the_oracles_answers_and_the_round_checkpoint_asks_nothing_twice(model_dir, tmp_path):
    """Round 1's 16 queries in 2 chunks of 8: SIGKILL as the second arrives, before the round's
    checkpoint. The resumed run reuses the first chunk's answers and asks only for the second."""
    common = [f"model.pretrained={model_dir}", *SEIKO_RUN, "algorithm.sample_batch_size=8"]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common)
    run, log = tmp_path / "run", tmp_path / "run.log"
    # calls of 8: round 0's one chunk, then round 1's first (answered) and second (killed).
    rlft(run, log, *common, "+reward.at_call=3", "+reward.batch_size=8", "+reward.signum=SIGKILL",
         "+reward.before=true", expect=-signal.SIGKILL)
    rlft(run, log, *common)
    seen = images_seen(log)
    assert len(seen) == len(set(seen)) == 24, "a query was paid for twice"
    assert [n for _, n in calls(log) if n != EVAL_IMAGES] == [8, 8, 8]
    assert_same_run(tmp_path / "reference", run)


def test_ppo_on_a_learned_reward_interrupted_while_the_oracle_answers_a_refit_resumes_exactly(model_dir, tmp_path):
    """reward=ensemble refitted every epoch on 8 fresh oracle answers (2 chunks of 4): SIGTERM
    as the first chunk of epoch 1's queries is answered, so the run stops in that refit. The
    resumed run reads the answers back instead of asking again, refits the same model and
    continues as the uninterrupted run."""
    common = [f"model.pretrained={model_dir}", *PPO_RUN, "reward=ensemble", "reward.queries=8",
              "reward.refresh_every_n_epochs=1", "reward.fit_epochs=3", "reward.val_fraction=0.25",
              "model.reward_feature_dim=4", "model.reward_features._target_=tests.test_seiko.PixelFeatures",
              "~model.reward_features.pretrained_model_name_or_path"]
    rlft(tmp_path / "reference", tmp_path / "reference.log", *common, reward="reward.oracle")
    run, log = tmp_path / "run", tmp_path / "run.log"
    rlft(run, log, *common, "+reward.oracle.at_call=3", "+reward.oracle.batch_size=4", expect=143, reward="reward.oracle")
    rlft(run, log, *common, reward="reward.oracle")
    assert_same_run(tmp_path / "reference", run)
    queries = [n for _, n in calls(log) if n != EVAL_IMAGES]
    assert queries == [4] * 6, f"the oracle was asked {queries}: 3 fits x 2 chunks of 4, none twice"
    a = torch.load(tmp_path / "reference" / "checkpoints" / "last.ckpt", weights_only=True)["rlft"]["learned_reward"]
    b = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["rlft"]["learned_reward"]
    assert a["fitted_epochs"] == b["fitted_epochs"] == [0, 1, 2]
    assert torch.equal(a["rewards"], b["rewards"]) and len(a["rewards"]) == 24
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
