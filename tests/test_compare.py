"""rlft compare on synthetic sweeps: the table's numbers, partial sweeps, clear errors."""

import csv

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from rlft.tools.compare import bootstrap_ci, main, paired_difference


def write_run(path, rewards, queries_per_epoch=32):
    with SummaryWriter(path) as writer:
        for step, reward in enumerate(rewards):
            writer.add_scalar("eval/oracle_reward", reward, step)
            writer.add_scalar("oracle/queries", queries_per_epoch * step, step)


@pytest.fixture
def sweep(tmp_path):
    write_run(tmp_path / "aggregation=max" / "seed=0", [-0.5, -0.3, -0.4])
    write_run(tmp_path / "aggregation=max" / "seed=1", [-0.5, -0.1])  # interrupted: a partial sweep
    write_run(tmp_path / "aggregation=mean" / "seed=0", [-0.5, -0.45, -0.2])
    return tmp_path


def test_table_holds_final_and_best_over_seeds(sweep):
    main([str(sweep), "--metric", "eval/oracle_reward", "--x", "oracle/queries"])
    rows = {r["config"]: r for r in csv.DictReader(open(sweep / "compare" / "summary.csv"))}
    assert set(rows) == {"aggregation=max", "aggregation=mean"}
    top = rows["aggregation=max"]
    assert top["seeds"] == "2" and top["seed_names"] == "0 1"
    assert float(top["final_mean"]) == pytest.approx(-0.25)  # last values -0.4 and -0.1
    assert float(top["final_std"]) == pytest.approx(0.2121320, abs=1e-6)  # sample std of the two
    assert float(top["best_mean"]) == pytest.approx(-0.2)  # best values -0.3 and -0.1
    assert float(top["last_x"]) == 64
    assert float(rows["aggregation=mean"]["final_std"]) == 0  # one seed
    assert "| `aggregation=max` | eval/oracle_reward | 2 | -0.25 ± 0.21 | -0.2 ± 0.14 (max) | 64 |" in (
        sweep / "compare" / "summary.md").read_text()
    assert (sweep / "compare" / "eval_oracle_reward.png").read_bytes()[:4] == b"\x89PNG"


def test_against_queries_the_last_value_at_each_x_counts(tmp_path):
    with SummaryWriter(tmp_path / "seiko" / "seed=0") as writer:  # two epochs per round of 32 queries
        for step, (queries, reward) in enumerate([(0, -0.5), (32, -0.45), (32, -0.4), (64, -0.35), (64, -0.3)]):
            writer.add_scalar("eval/oracle_reward", reward, step)
            writer.add_scalar("oracle/queries", queries, step)
    main([str(tmp_path), "--metric", "eval/oracle_reward", "--x", "oracle/queries"])
    (row,) = csv.DictReader(open(tmp_path / "compare" / "summary.csv"))
    assert float(row["final_mean"]) == pytest.approx(-0.3) and float(row["last_x"]) == 64


def test_no_event_files_is_a_clear_message(tmp_path):
    with pytest.raises(SystemExit, match="rlft compare: no TensorBoard event files under"):
        main([str(tmp_path)])


def test_unknown_metric_names_what_was_logged(sweep):
    with pytest.raises(SystemExit, match=r"no run under .* logged \['reward/mean'\]; the runs logged \['eval/oracle_reward', 'oracle/queries'\]"):
        main([str(sweep), "--metric", "reward/mean"])


def test_best_is_the_lowest_for_losses_kl_and_errors(tmp_path):
    for seed, kl in enumerate([[0.3, 0.1, 0.2], [0.5, 0.4, 0.45]]):
        with SummaryWriter(tmp_path / "kl_weight=0.01" / f"seed={seed}") as writer:
            for step, value in enumerate(kl):
                writer.add_scalar("train/kl", value, step)
                writer.add_scalar("ensemble/val_mae", value * 10, step)
                writer.add_scalar("eval/oracle_reward", -value, step)
    main([str(tmp_path), "--metric", "train/kl", "--metric", "ensemble/val_mae", "--metric", "eval/oracle_reward"])
    rows = {r["metric"]: r for r in csv.DictReader(open(tmp_path / "compare" / "summary.csv"))}
    assert float(rows["train/kl"]["best_mean"]) == pytest.approx((0.1 + 0.4) / 2) and rows["train/kl"]["best_is"] == "min"
    assert float(rows["ensemble/val_mae"]["best_mean"]) == pytest.approx(2.5)
    assert float(rows["eval/oracle_reward"]["best_mean"]) == pytest.approx(-0.25)  # higher is better


def test_seeds_that_share_x_are_averaged_at_each_x_and_wall_time_at_each_position():
    from rlft.tools.compare import seed_mean_curve
    # Queries: a seed cut short still adds its points where the others have the same x.
    assert seed_mean_curve([[(32, 1.0), (64, 3.0)], [(32, 3.0)]]) == [
        (32.0, 2.0, pytest.approx(2 ** 0.5)), (64.0, 3.0, 0.0)]
    # Wall time differs between seeds: the k-th points are averaged, x included.
    assert seed_mean_curve([[(10.0, 1.0), (20.0, 2.0)], [(12.0, 3.0), (26.0, 4.0)]]) == [
        (11.0, 2.0, pytest.approx(2 ** 0.5)), (23.0, 3.0, pytest.approx(2 ** 0.5))]


def test_bootstrap_ci_matches_the_normal_interval_for_many_seeds():
    values = np.random.default_rng(1).normal(2.0, 0.5, size=400)
    lo, hi = bootstrap_ci(values)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert lo < values.mean() < hi
    assert abs((hi - lo) / 2 - half) < 0.1 * half
    assert abs((lo + hi) / 2 - values.mean()) < 0.1 * half


def test_bootstrap_ci_is_a_point_for_equal_seeds_and_stays_within_their_range():
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))
    lo, hi = bootstrap_ci([-0.5, -0.4, -0.45, -0.3, -0.6])
    assert -0.6 <= lo < -0.45 < hi <= -0.3
    wider = bootstrap_ci([-0.5, -0.4, -0.45, -0.3, -0.6], level=0.99)
    assert wider[0] <= lo and wider[1] >= hi


@pytest.mark.parametrize("values, level, match", [([1.0], 0.95, "at least 2"), ([1.0, 2.0], 1.5, "level")])
def test_bootstrap_ci_refuses_what_it_cannot_bound(values, level, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values, level=level)


def test_paired_difference_pairs_by_seed_and_marks_an_interval_that_excludes_zero():
    a = {"0": 1.0, "1": 2.0, "2": 3.0, "3": 4.0}
    shifted = {s: v - 0.5 + 0.01 * i for i, (s, v) in enumerate(a.items())}  # unpaired, the spread hides 0.5
    assert paired_difference(a, shifted).startswith("+0.48")
    assert paired_difference(a, shifted).split()[2].endswith("]*")
    noisy = {"0": 1.1, "1": 1.9, "2": 3.1, "3": 3.9}
    assert "*" not in paired_difference(a, noisy)
    assert paired_difference(a, {"0": 1.0, "9": 2.0}) == "- (seeds in common: 1)"
