"""The identity of a frozen base model, stored in every checkpoint instead of its weights.

A checkpoint holds only what training changes; the base is reloaded from the config on resume.
The fingerprint makes sure it is the same base: its source, revision, variant and dtype, and a
digest of the model directory's files (the config files' contents; the weight files' names,
sizes and, for safetensors, their headers: every tensor's name, dtype, shape and offset).
Reading headers, not weights, keeps it instant at SD size.
"""

import hashlib
import json
import struct
from pathlib import Path

CONTENT_SUFFIXES = (".json", ".txt", ".yaml", ".model")  # configs, vocabularies: hashed whole
MAX_HEADER = 100 * 2**20


def safetensors_header(path: Path) -> bytes:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return f.read(min(length, MAX_HEADER))


def directory_digest(root: Path, parts: tuple[str, ...]) -> str:
    """Over the files of `parts` (the component folders and files the loader reads: a run
    directory or anything else beside them is not the model)."""
    digest = hashlib.sha256()
    files = [p for part in parts for p in ([root / part] if (root / part).is_file() else (root / part).rglob("*"))]
    for path in sorted(p for p in files if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name.startswith(".") or "/." in name:
            continue  # caches and lock files of the hub's local layout
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".safetensors":
            digest.update(safetensors_header(path))
        elif path.suffix in CONTENT_SUFFIXES:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def local_directory(source: str, revision: str | None) -> Path | None:
    """A local model directory, or the hub cache's snapshot of a hub id (no download)."""
    if Path(source).is_dir():
        return Path(source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(source, revision=revision, local_files_only=True))
    except Exception:  # not cached, or not a hub id: identified by name only
        return None


def base_fingerprint(source: str, parts: tuple[str, ...], dtype: str | None = None, revision: str | None = None,
                     variant: str | None = None) -> dict:
    """`parts`: the model directory's components the loader reads (e.g. "unet", "model_index.json")."""
    directory = local_directory(str(source), revision)
    return {"source": str(source), "revision": revision, "variant": variant, "dtype": dtype,
            "digest": directory_digest(directory, tuple(parts)) if directory is not None else None}


def same_base(stored: dict, current: dict) -> bool:
    """Equal in everything but the source path, which may differ (a moved directory, the
    package installed elsewhere) when the digest identifies the files."""
    if any(stored.get(k) != current.get(k) for k in (set(stored) | set(current)) - {"source"}):
        return False
    return current.get("digest") is not None or stored.get("source") == current.get("source")


def describe(fingerprint: dict) -> str:
    digest = fingerprint.get("digest")
    return json.dumps({**fingerprint, "digest": digest[:12] if digest else None})
