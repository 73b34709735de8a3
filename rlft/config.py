"""Where the Hydra configs live, and the resolvers they use."""

from pathlib import Path

from omegaconf import OmegaConf

from rlft.assets import asset_path

# conf/ sits at the top of the repository (the user's layout); rlft is installed editable.
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

# `${asset:digits16}` -> the path of a model directory shipped inside the package.
# `${len:${.queries_per_round}}`, `${mul:a,b}`: SEIKO's epochs from its round schedule.
for name, resolver in (("asset", asset_path), ("len", len), ("mul", lambda a, b: a * b)):
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, resolver)


def check_config_dir() -> None:
    if not Path(CONFIG_DIR).is_dir():
        raise SystemExit(
            f"rlft: its Hydra configs are not at {CONFIG_DIR}. rlft runs from its repository: "
            "install it with `pip install -e .` in the clone (see README.md)."
        )
