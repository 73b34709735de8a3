"""Prompt embeddings on disk: any number of prompts at a memory cost that does not grow with them.

A run encodes each of its prompts once (`DiffusionPolicy.cache_prompts`). Kept in host memory, the
embeddings of Flow-GRPO's 27,480 PickScore prompts would take about 72 GiB per process for SD3.5
(T5 at 256 tokens of 4096); here they are written to safetensors shards of `SHARD` prompts and read
back a batch at a time: each read opens the shards it needs (safetensors memory-maps them) and closes
them, so no page of the store stays mapped between reads.

A store is a directory named by the text encoders' fingerprint (`encoder_key`: the model interface's
class, its settings, the base model's fingerprint and the negative prompt's embedding), so a resumed
or repeated run reuses it, and embeddings of other encoders are never mixed in: they have another
directory, and each shard records its key, checked when it is read. Prompts are looked up by text, so
prompt sets may share a store. Shards are written whole to a temporary name and renamed: two
processes writing the same prompts (one per node) leave one complete shard.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rlft.types import PromptEmbeds

SHARD = 1024  # prompts per file
FIELDS = ("tokens", "pooled", "mask")


def encoder_key(model, base_fingerprint: dict, probe: PromptEmbeds) -> str:
    """What the embeddings depend on: the model interface (its class and plain settings, e.g. T5's
    `max_sequence_length`), the base model's identity and a probe prompt's embedding `probe` (the
    policy's negative prompt: it changes with the weights, the dtype, a template, the length)."""
    settings = {k: v for k, v in vars(model).items() if not k.startswith("_") and isinstance(v, (int, float, str, bool))}
    digest = hashlib.sha256(json.dumps([type(model).__qualname__, settings, base_fingerprint.get("digest"),
                                        base_fingerprint.get("dtype")], sort_keys=True, default=str).encode())
    for field in probe.fields():
        if field is not None:
            digest.update(str((field.dtype, tuple(field.shape))).encode())
            digest.update(field.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


class EmbeddingStore:
    """The embeddings of one text-encoder fingerprint (`key`), under `root/key/`."""

    def __init__(self, root: str | Path, key: str):
        self.key = key
        self.directory = Path(root).expanduser() / key
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[str, int]] = {}  # prompt -> (shard file name, row)
        self.refresh()

    def refresh(self) -> None:
        """Index the shards on disk (another process may have written some since)."""
        for path in sorted(self.directory.glob("*.safetensors")):
            if any(shard == path.name for shard, _ in self.index.values()):
                continue
            with safe_open(path, "pt") as f:
                meta = f.metadata()
            if meta.get("key") != self.key:
                raise ValueError(f"{path} holds embeddings of text encoders {meta.get('key')!r}, not of this run's "
                                 f"{self.key!r}: it does not belong in {self.directory} (delete it)")
            for row, prompt in enumerate(json.loads(meta["prompts"])):
                self.index.setdefault(prompt, (path.name, row))

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.index

    def missing(self, prompts) -> list[str]:
        return sorted({p for p in prompts if p not in self.index})

    def write(self, prompts: list[str], embeds: PromptEmbeds) -> None:
        """One shard: row i is `prompts[i]`'s embedding."""
        tensors = {}
        for row, prompt in enumerate(prompts):
            for name, value in zip(FIELDS, embeds[row : row + 1].fields()):
                if value is not None:
                    tensors[f"{row}.{name}"] = value.detach().cpu().contiguous()
        name = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:20] + ".safetensors"
        descriptor, partial = tempfile.mkstemp(dir=self.directory, suffix=".partial")
        os.close(descriptor)
        save_file(tensors, partial, metadata={"key": self.key, "prompts": json.dumps(prompts)})
        os.replace(partial, self.directory / name)
        for row, prompt in enumerate(prompts):
            self.index[prompt] = (name, row)

    def read(self, prompts: list[str]) -> PromptEmbeds:
        """The embeddings of `prompts` in their order (on the CPU), each shard opened once."""
        unknown = self.missing(prompts)
        if unknown:
            raise KeyError(f"prompts {unknown} are not in the embedding store {self.directory}")
        rows = {}
        for shard in {self.index[p][0] for p in prompts}:
            with safe_open(self.directory / shard, "pt") as f:
                names = set(f.keys())
                for prompt in {p for p in prompts if self.index[p][0] == shard}:
                    row = self.index[prompt][1]
                    rows[prompt] = PromptEmbeds(*(f.get_tensor(f"{row}.{n}") if f"{row}.{n}" in names else None
                                                  for n in FIELDS))
        return PromptEmbeds.cat([rows[p] for p in prompts])
