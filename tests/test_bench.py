"""python -m rlft.bench runs on a tiny model and reports every ratio."""

import json

from tests.test_end_to_end import run_rlft


def test_bench_writes_the_ratios(tiny_model_dir, tmp_path):
    run = tmp_path / "bench"
    out = run_rlft(f"model.pretrained={tiny_model_dir}", "bench.repeats=1", "bench.samples=4", "policy.num_steps=2",
                   "algorithm.train_batch_size=2", f"hydra.run.dir={run}", module="rlft.bench", cwd=tmp_path).stdout
    result = json.loads((run / "bench.json").read_text())
    for name in ("sample", "ppo_train", "seiko_step"):
        assert result[f"{name}_ratio"] > 0 and result[f"{name}_bare_s"] > 0
    assert result["peak_rss_mb"] > 0 and "outside UNet" in out
