"""The layout that keeps one home per option: each configured class checks its own settings
(validate names none), an algorithm is its module and its config, and no module imports from a
layer above its own."""

import ast
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlft.checks import ConfigError
from rlft.run.validation import validate
from rlft.run.work import projected_unet_evals
from rlft.tools.tensorboard import read_scalars
from tests.test_config import compose_cfg
from tests.test_end_to_end import run_rlft

TOY = ["algorithm=ddpo_sf", "algorithm._target_=tests.toy_algorithm.Toy"]


def test_a_new_algorithms_own_check_runs_at_composition():
    validate(compose_cfg([*TOY, "+algorithm.toy_weight=2.0"]))
    with pytest.raises(ConfigError, match=r"algorithm.toy_weight=0.0 is invalid: must be > 0 \(the toy's scale\)"):
        validate(compose_cfg([*TOY, "+algorithm.toy_weight=0.0"]))
    # and the shared pipeline's checks still run for it (its class extends OnlineRL's)
    with pytest.raises(ConfigError, match=r"algorithm.adv_clip_max=0.0 is invalid"):
        validate(compose_cfg([*TOY, "+algorithm.toy_weight=2.0", "algorithm.adv_clip_max=0.0"]))


def test_a_new_algorithm_trains_through_the_cli(tiny_model_dir, tmp_path):
    """Its module and its config keys are all it takes: the pipeline samples, scores, updates and
    logs its loss's statistics."""
    run = tmp_path / "toy"
    result = run_rlft(*TOY, "+algorithm.toy_weight=0.5", f"model.pretrained={tiny_model_dir}", "trainer.max_epochs=2",
             "data.samples_per_epoch=4", "algorithm.sample_batch_size=4", "algorithm.train_batch_size=2",
             "policy.num_steps=2", f"hydra.run.dir={run}", cwd=tmp_path)
    scalars = read_scalars(run)
    assert [step for step, _ in scalars["train/toy_log_prob"]] == [0, 1]
    assert all(math.isfinite(v) for _, v in scalars["train/loss"])
    assert OmegaConf.load(run / ".hydra" / "config.yaml").algorithm.toy_weight == 0.5
    # The (model, algorithm) pair's settings are said at the start, the command line's winning.
    assert ("model=digits algorithm=ddpo_sf: conf/model_algorithm/digits_ddpo_sf.yaml sets algorithm.lr=0.003, "
            "algorithm.train_batch_size=2 (the command line's; the pair's 8)") in result.stdout + result.stderr


def test_a_target_that_cannot_be_imported_is_refused_at_composition():
    with pytest.raises(ConfigError, match=r"reward._target_='rlft.rewards.nowhere.Nothing' is invalid: it cannot be imported"):
        validate(compose_cfg(["reward._target_=rlft.rewards.nowhere.Nothing"]))


def test_validate_names_no_option():
    """The central checks know the run's own keys, the trainer and the processes, nothing else."""
    source = Path("rlft/run/validation.py").read_text()
    for name in ("ppo", "grpo", "seiko", "nft", "awm", "rwr", "ddpo_sf", "rlft.rewards", "rlft.algorithms",
                 "algorithm.name", "reward.", "policy."):
        assert not re.search(rf"\b{re.escape(name)}", source), f"rlft/run/validation.py names {name!r}: that check belongs beside its class"


def test_each_algorithm_projects_its_own_work():
    """AWM: per sample, the sampled steps (guidance 1) plus, per training time, forward + backward (3),
    the old log-probability's forward, the base's for the KL and the EMA adapter's (1 each)."""
    cfg = compose_cfg(["model=digits_flow", "algorithm=awm"])
    a = cfg.algorithm
    per_sample = cfg.policy.num_steps + a.train_timesteps * (3 + 1 + 1 + 1)
    assert projected_unet_evals(cfg, batched_guidance=False) == cfg.trainer.max_epochs * cfg.data.samples_per_epoch * per_sample
    without_kl = compose_cfg(["model=digits_flow", "algorithm=awm", "algorithm.kl_weight=0", "algorithm.ema_kl_weight=0"])
    assert projected_unet_evals(without_kl, batched_guidance=False) == (
        cfg.trainer.max_epochs * cfg.data.samples_per_epoch * (cfg.policy.num_steps + a.train_timesteps * 4))


# Layers, lowest first: a module may import from its own layer and those below, never above.
UPPER_RUN = {"rlft.run.train", "rlft.run.validation", "rlft.run.cli", "rlft.run.config", "rlft.run.work"}
FORBIDDEN = {
    "rlft.types": {"rlft"},
    "rlft.checks": {"rlft"},
    "rlft.diffusion": {"rlft.models", "rlft.rewards", "rlft.ensemble", "rlft.algorithms", "rlft.run", "rlft.tools"},
    "rlft.models": {"rlft.diffusion", "rlft.algorithms", "rlft.run", "rlft.tools"},
    "rlft.rewards": {"rlft.algorithms", "rlft.tools", *UPPER_RUN},
    "rlft.ensemble": {"rlft.algorithms", "rlft.tools", *UPPER_RUN},
    "rlft.algorithms": {"rlft.tools", *UPPER_RUN},
}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return {n for n in names if n == "rlft" or n.startswith("rlft.")}


def test_no_module_imports_from_a_layer_above():
    root = Path("rlft")
    wrong = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        for layer, above in FORBIDDEN.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for name in imports_of(path):
                if any(name == a or name.startswith(a + ".") for a in above):
                    wrong.append(f"{module} imports {name}")
    assert not wrong, wrong
