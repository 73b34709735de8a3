"""Where the Hydra configs live, and the resolvers they use."""

import re
from pathlib import Path

from omegaconf import OmegaConf

from rlft.assets import asset_path
from rlft.prompts import prompt_set

# conf/ sits at the top of the repository (the user's layout); rlft is installed editable.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")



def job_name(override_dirname: str, algorithm: str) -> str:
    """A sweep job's folder: its overrides, led by the algorithm when they do not name it
    (so that a PPO baseline with no overrides of its own is `algorithm=ppo`, never "")."""
    if re.search(r"(^|,)algorithm=", override_dirname):
        return override_dirname
    return f"algorithm={algorithm}" + (f",{override_dirname}" if override_dirname else "")


# `${asset:digits16}` -> the path of a model directory shipped inside the package.
# `${len:${.queries_per_round}}`, `${mul:a,b}`: SEIKO's epochs from its round schedule.
# `${job_name:${hydra:job.override_dirname},${algorithm.name}}`: see job_name.
# `${prompt_set:imagenet_animals}`: a prompt list shipped in rlft/prompts/.
for name, resolver in (("asset", asset_path), ("len", len), ("mul", lambda a, b: a * b), ("job_name", job_name),
                       ("prompt_set", prompt_set)):
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver)


def check_config_dir() -> None:
    if not Path(CONFIG_DIR).is_dir():
        raise SystemExit(
            f"rlft: its Hydra configs are not at {CONFIG_DIR}. rlft runs from its repository: "
            "install it with `pip install -e .` in the clone (see README.md)."
        )
