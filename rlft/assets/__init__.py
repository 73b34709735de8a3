"""Weights that ship with rlft: the embedded default model and its digit classifier."""

from pathlib import Path

ASSETS_DIR = Path(__file__).parent


def asset_path(name: str) -> str:
    path = ASSETS_DIR / name
    if not path.exists():
        available = sorted(p.name for p in ASSETS_DIR.iterdir() if p.is_dir() and not p.name.startswith("_"))
        raise FileNotFoundError(f"no shipped asset {name!r} in {ASSETS_DIR}; available: {available}")
    return str(path)
