"""What ships beside rlft's code: the embedded default model and its digit classifier (here), and
the Hydra configs (`CONFIG_DIR`)."""

from pathlib import Path

ASSETS_DIR = Path(__file__).parent
# conf/ sits at the top of the repository, beside rlft/ (rlft is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def asset_path(name: str) -> str:
    path = ASSETS_DIR / name
    if not path.exists():
        available = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise FileNotFoundError(f"no shipped asset {name!r} in {ASSETS_DIR}; available: {available}")
    return str(path)
