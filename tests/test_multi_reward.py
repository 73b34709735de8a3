"""reward=multi (rlft.rewards.multi) and held-out evaluation rewards (evaluation.rewards): the
weighted sum, per-component advantages against a computation written here, a NaN kept to its
component, bad settings refused at composition, logs and stored answers of a CLI run, and a run
killed mid-epoch that resumes bitwise without asking any component twice."""

import math
import signal

import pytest
import torch
from hydra.utils import instantiate

from rlft.algorithms.advantages import group_normalized
from rlft.algorithms.pipeline import OnlineRL
from rlft.rewards.jpeg import JpegCompressibility, JpegIncompressibility
from rlft.rewards.multi import MultiReward
from rlft.rewards.scorer import Scorer
from rlft.run.validation import ConfigError, validate
from rlft.tools.tensorboard import read_scalars
from tests.conftest import save_tiny_model
from tests.manual import undocumented_metrics
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft
from tests.test_resume import assert_same_run, images_seen

TWO = "reward.components={compressibility:1.0,incompressibility:0.5}"


def constant(value):
    return lambda images, prompts: torch.full((len(images),), float(value))


def test_the_reward_is_the_weighted_sum_and_a_nan_spoils_only_the_sum():
    multi = MultiReward({"a": 2.0, "b": 0.5}, {"a": constant(1.0), "b": constant(-4.0)})
    assert multi(torch.zeros(3, 1, 4, 4), ["x"] * 3).tolist() == [0.0, 0.0, 0.0]  # 2 * 1 + 0.5 * -4
    parts = torch.tensor([[1.0, 2.0], [float("nan"), 2.0]])
    combined = multi.combine_parts(parts)
    assert combined[0] == 3.0 and math.isnan(combined[1])


def test_per_component_advantages_are_each_group_normalised_then_weighted():
    """combine=advantages under GRPO: each column normalised in its groups over its own finite
    values, written out here with group_normalized's formula, weighted and summed; a NaN in one
    component leaves the other component's advantage to that sample."""
    module = OnlineRL.__new__(OnlineRL)  # only the advantage code: no policy needed
    module.scorer = Scorer(MultiReward({"a": 1.0, "b": 0.25}, {"a": constant(0), "b": constant(0)}, combine="advantages"))
    module.group_size, module.std_normalize, module.global_std, module.adv_clip_max = 2, True, False, 5.0
    module.component_trackers = None
    parts = torch.tensor([[1.0, 10.0], [3.0, 30.0], [2.0, float("nan")], [0.0, 50.0]])
    ours = module.advantages(["p", "p", "q", "q"], parts, torch.isfinite(parts).any(1))

    def by_hand(column):  # (r - mean) / (std + 1e-4) within groups of 2, finite values only
        out = []
        for g in range(0, 4, 2):
            r = column[g : g + 2]
            ok = torch.isfinite(r)
            mean, std = r[ok].mean(), r[ok].std(unbiased=False)
            out += [float((x - mean) / (std + 1e-4)) if torch.isfinite(x) else 0.0 for x in r]
        return torch.tensor(out)

    expected = by_hand(parts[:, 0]) + 0.25 * by_hand(parts[:, 1])
    torch.testing.assert_close(ours, expected)
    # Sample 2 has no b: its advantage is a's alone, and its group partner's b gets no statistics from it.
    assert ours[2] == pytest.approx(float(group_normalized(parts[2:, 0], torch.ones(2, dtype=torch.bool), 2)[0]))
    assert ours[3] == pytest.approx(float(group_normalized(parts[2:, 0], torch.ones(2, dtype=torch.bool), 2)[1]))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["reward=multi", "reward.components={compressibility:0}"],
         r"reward.components.compressibility=0 is invalid: a weight must be a finite number > 0"),
        (["reward=multi", "reward.components={compressibility:-1.0}"], r"must be a finite number > 0"),
        (["reward=multi", "reward.components={pickscores:1.0}"],
         r"reward.components.pickscores is invalid: 'pickscores' is no reward option; valid: \[.*'pickscore'"),
        (["reward=multi", "reward.components={multi:1.0}"], r"'multi' is no reward option"),
        (["reward=multi", "reward.components={}"], r"reward.components is empty"),
        (["reward=multi", TWO, "reward.combine=mean"], r"reward.combine='mean' is invalid: must be one of \['sum', 'advantages'\]"),
        (["reward=multi", TWO, "+reward.settings.pickscore.divisor=26"], r"reward.settings=\['pickscore'\] is invalid: names rewards that are no component"),
        (["reward=multi", TWO, "algorithm=seiko", "reward.combine=advantages"], r"SEIKO fits one reward model"),
        (["evaluation.rewards=[clipscores]"], r"evaluation.rewards=\['clipscores'\] is invalid: 'clipscores' is no reward option"),
        (["evaluation.rewards=[clipscore,clipscore]"], r"names a reward twice"),
        (["reward=multi", TWO, "evaluation.rewards=[incompressibility]"], r"incompressibility is a component of reward=multi"),
        (["+evaluation.settings.clipscore.divisor=1"], r"evaluation.settings=\['clipscore'\] is invalid: names rewards that are not held out"),
    ],
)
def test_bad_settings_fail_at_composition_naming_what_is_valid(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_components_and_held_out_rewards_build_from_their_group_options_with_settings():
    cfg = compose_cfg(["reward=multi", TWO, "+reward.settings.incompressibility.quality=50",
                       "evaluation.rewards=[digit_alignment]"])
    validate(cfg)
    reward = instantiate(cfg.reward)
    assert reward.names == ["compressibility", "incompressibility"] and reward.weights.tolist() == [1.0, 0.5]
    assert isinstance(reward.rewards["compressibility"], JpegCompressibility)
    assert isinstance(reward.rewards["incompressibility"], JpegIncompressibility)
    assert reward.rewards["incompressibility"].quality == 50 and reward.rewards["compressibility"].quality == 95
    evaluation = instantiate(cfg.algorithm.evaluation)
    assert list(evaluation.held_out) == ["digit_alignment"] and evaluation.scorer.components == reward.names


def test_a_ppo_run_logs_every_component_and_held_out_reward_and_stores_each_answer(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    run = tmp_path / "run"
    run_rlft(f"model.pretrained={model}", "trainer.max_epochs=2", "data.samples_per_epoch=8",
             "algorithm.sample_batch_size=4", "algorithm.train_batch_size=4", "policy.num_steps=3",
             "reward=multi", TWO, "evaluation.rewards=[digit_alignment]", "algorithm.eval_every_n_epochs=1",
             "algorithm.evaluation.samples_per_prompt=1", f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    assert not undocumented_metrics(s, names=("compressibility", "incompressibility", "digit_alignment"))
    for epoch in range(2):
        c, i = s["reward/compressibility"][epoch][1], s["reward/incompressibility"][epoch][1]
        assert c == pytest.approx(-i) and c < 0  # the same images' JPEG sizes, signed
        assert s["reward/mean"][epoch][1] == pytest.approx(c + 0.5 * i, abs=1e-5)
        ec, ei = s["eval/compressibility"][epoch][1], s["eval/incompressibility"][epoch][1]
        assert s["eval/oracle_reward"][epoch][1] == pytest.approx(ec + 0.5 * ei, abs=1e-5)
        assert math.isfinite(s["eval/digit_alignment"][epoch][1]) and s["eval/digit_alignment"][epoch][1] < 0  # a log-prob
    answers = run / "checkpoints" / "answers"
    for name in ("compressibility", "incompressibility"):
        stored = torch.load(answers / "rollout" / "epoch=00001" / "samples=4-8" / f"{name}.pt", weights_only=True)
        assert stored["rewards"].shape == (4,)
    assert (answers / "eval" / "epoch=00000" / "samples=0-10" / "digit_alignment.pt").is_file()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


def test_combine_advantages_killed_mid_epoch_resumes_bitwise_and_asks_no_component_twice(model_dir, tmp_path):
    """The signalling reward is one component (its log counts every image it scores); SIGKILL
    as epoch 1's second chunk reaches it. Per-component trackers are in the checkpoint."""
    from tests.test_resume import PPO_RUN

    signalling = "+reward.settings.compressibility"
    common = [f"model.pretrained={model_dir}", *PPO_RUN, "reward=multi", TWO, "reward.combine=advantages",
              "evaluation.rewards=[digit_alignment]", "algorithm.stat_min_count=2",
              f"{signalling}._target_=tests.signalling_reward.SignallingReward"]
    reference, reference_log = tmp_path / "reference", tmp_path / "reference.log"
    run_rlft(*common, f"{signalling}.log={reference_log}", f"hydra.run.dir={reference}", cwd=tmp_path)
    run, log = tmp_path / "run", tmp_path / "run.log"
    run_rlft(*common, f"{signalling}.log={log}", f"{signalling}.at_call=4", f"{signalling}.batch_size=4",
             f"{signalling}.signum=SIGKILL", f"{signalling}.before=true", f"hydra.run.dir={run}", cwd=tmp_path,
             expect=-signal.SIGKILL)
    assert len(images_seen(log)) == 12  # epoch 0's 8 and epoch 1's first 4
    run_rlft(*common, f"{signalling}.log={log}", f"hydra.run.dir={run}", cwd=tmp_path)
    seen = images_seen(log)
    assert len(seen) == len(set(seen)) == len(images_seen(tmp_path / "reference.log")), "an image was scored twice"
    assert_same_run(tmp_path / "reference", run)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["rlft"]["component_trackers"]
    assert set(state) == {"compressibility", "incompressibility"} and state["compressibility"]["buffers"]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_the_tiny_sd3_trains_on_two_components_and_logs_a_held_out_reward(tmp_path, algorithm):
    from tests.test_stable_diffusion import save_tiny_assets, sd_overrides
    from tests.tiny_sd import save_tiny_clip, save_tiny_sd3

    assets = save_tiny_assets(tmp_path / "assets", {"sd3": save_tiny_sd3})
    clip = save_tiny_clip(tmp_path / "clip")
    run = tmp_path / "run"
    overrides = [a for a in sd_overrides(assets, model="sd3", pipeline="sd3") if not a.startswith("reward")]
    run_rlft(*overrides, "model.max_sequence_length=8", f"algorithm={algorithm}",
             *(["algorithm.group_size=2"] if algorithm == "grpo" else []),
             "algorithm.sample_batch_size=2", "algorithm.train_batch_size=2", "reward=multi",
             "reward.components={clipscore:1.0,compressibility:0.5}", "reward.combine=advantages",
             f"+reward.settings.clipscore.model_path={clip}", f"+reward.settings.clipscore.processor_path={clip}",
             "+reward.settings.clipscore.max_length=16", "evaluation.rewards=[pickscore]",
             f"+evaluation.settings.pickscore.model_path={clip}", f"+evaluation.settings.pickscore.processor_path={clip}",
             "+evaluation.settings.pickscore.max_length=16", f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    for tag in ("reward/mean", "reward/clipscore", "reward/compressibility", "eval/oracle_reward", "eval/clipscore",
                "eval/compressibility", "eval/pickscore", "rollout/advantage_absmean"):
        assert s[tag] and all(math.isfinite(v) for _, v in s[tag]), tag
    for (_, total), (_, c), (_, j) in zip(s["reward/mean"], s["reward/clipscore"], s["reward/compressibility"]):
        assert total == pytest.approx(c + 0.5 * j, abs=1e-5)
    # Both held-out and trained scores come from the same tiny CLIP on the same samples: PickScore's
    # config divides logit_scale.exp() * cos by 1, CLIPScore's by 100.
    assert s["eval/pickscore"][-1][1] == pytest.approx(100 * s["eval/clipscore"][-1][1], rel=1e-4)


def test_seiko_logs_held_out_rewards_from_the_base_models_evaluation_on(model_dir, tmp_path):
    from tests.test_resume import SEIKO_RUN

    run = tmp_path / "run"
    run_rlft(f"model.pretrained={model_dir}", *SEIKO_RUN, "evaluation.rewards=[incompressibility]",
             f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    assert [step for step, _ in s["eval/incompressibility"]] == [step for step, _ in s["eval/oracle_reward"]]
    assert s["eval/incompressibility"][0][0] == 0  # the base model, before any query
    for (_, held_out), (_, oracle) in zip(s["eval/incompressibility"], s["eval/oracle_reward"]):
        assert held_out == pytest.approx(-oracle)  # JPEG size, and minus it (reward=compressibility)


class HalfNan(JpegIncompressibility):
    """JPEG size, NaN for every other image: a component that sometimes gives no answer."""

    def __call__(self, images, prompts):
        rewards = super().__call__(images, prompts)
        rewards[::2] = float("nan")
        return rewards


@pytest.mark.parametrize("combine,nonfinite", [("advantages", 0), ("sum", 8)])
def test_a_nan_in_one_component_costs_the_sample_only_that_component_under_advantages(model_dir, tmp_path, combine, nonfinite):
    run = tmp_path / "run"
    result = run_rlft(f"model.pretrained={model_dir}", "trainer.max_epochs=1", "data.samples_per_epoch=16",
                      "algorithm.sample_batch_size=4", "algorithm.train_batch_size=4", "policy.num_steps=3",
                      "reward=multi", TWO, f"reward.combine={combine}", "health.max_nonfinite_fraction=0.9",
                      "+reward.settings.incompressibility._target_=tests.test_multi_reward.HalfNan",
                      f"hydra.run.dir={run}", cwd=tmp_path)
    s = read_scalars(run)
    # Under advantages every sample keeps compressibility's advantage; under sum half the sums are NaN.
    assert s["health/nonfinite_rewards"][-1][1] == nonfinite
    assert "the reward component incompressibility returned 8/16 non-finite values" in result.stdout + result.stderr
    assert math.isfinite(s["reward/incompressibility"][0][1]) and math.isfinite(s["rollout/advantage_absmean"][0][1])
