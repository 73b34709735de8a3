"""The manual's commands for the run most users come for, GRPO on SD3.5 Medium with PickScore on one
GPU and on 8: each, pasted as written (stand-in prompt files for flow_grpo's), composes and validates,
sharding included (8 processes: samples, micro-batches and accumulation steps must fit)."""

import re
import shlex

import pytest

from rlft.run.validation import validate
from tests.manual import page
from tests.test_config import compose_cfg

PAGES = ["algorithms/grpo.md", "getting-started.md"]


def commands(name: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", page(name), flags=re.S)
    return [b.replace("\\\n", " ") for b in blocks if "+experiment=flow_grpo_pickscore_sd35" in b]


def test_each_page_has_the_one_gpu_and_the_eight_gpu_command():
    for name in PAGES:
        found = commands(name)
        assert len(found) == 2, name
        assert "trainer.devices=8" not in found[0] and "trainer.devices=8" in found[1]


@pytest.mark.parametrize("name", PAGES)
def test_the_commands_compose_and_validate(name, tmp_path):
    prompts = tmp_path / "flow_grpo" / "dataset" / "pickscore"
    prompts.mkdir(parents=True)
    for split in ("train", "test"):
        (prompts / f"{split}.txt").write_text(f"a {split} prompt\nanother {split} prompt\n")
    for command in commands(name):
        args = shlex.split(command.replace("/path/to/flow_grpo", str(tmp_path / "flow_grpo")))
        assert args[:3] == ["python", "-m", "rlft"]
        cfg = compose_cfg(args[3:])
        validate(cfg)  # the algorithm's checks include the shards of trainer.devices x num_nodes processes
        assert cfg.model.prompts.train == ["a train prompt", "another train prompt"]
