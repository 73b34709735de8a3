import pytest
from torch.utils.tensorboard import SummaryWriter

from rlft.tools.plot import main


@pytest.fixture
def run_dir(tmp_path):
    with SummaryWriter(tmp_path / "run") as writer:
        for step in range(3):
            writer.add_scalar("reward/mean", -0.5 + 0.1 * step, step)
            writer.add_scalar("oracle/queries", 64.0 * step, step)
    return tmp_path / "run"


def test_writes_a_png(run_dir, tmp_path):
    main([str(run_dir), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_metric_lists_the_logged_ones(run_dir, tmp_path):
    with pytest.raises(SystemExit, match=r"no metric 'reward/max'.*reward/mean"):
        main([str(run_dir), "--metric", "reward/max", "--out", str(tmp_path / "c.png")])


def test_directory_without_events_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no TensorBoard event files"):
        main([str(tmp_path), "--out", str(tmp_path / "c.png")])


def test_against_another_metric(run_dir, tmp_path, monkeypatch):
    import rlft.tools.plot

    seen = {}
    real = rlft.tools.plot.metric_curves
    monkeypatch.setattr(rlft.tools.plot, "metric_curves", lambda series, **kw: seen.update(series) or real(series, **kw))
    main([str(run_dir), "--x", "oracle/queries", "--out", str(tmp_path / "c.png")])
    assert [x for x, _ in seen["run"]] == [0.0, 64.0, 128.0]


def test_metric_curves_applies_each_labels_line_style():
    from rlft.tools.visualize import metric_curves

    figure = metric_curves({"a gold": [(1, 0.0), (2, 1.0)], "a proxy": [(1, 0.5), (2, 0.7)]}, ylabel="r",
                           styles={"a proxy": {"linestyle": "--", "color": "C3"}})
    gold, proxy = figure.axes[0].get_lines()
    assert gold.get_linestyle() == "-" and proxy.get_linestyle() == "--" and proxy.get_color() == "C3"
