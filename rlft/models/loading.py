"""What every model family's loader shares: the checks made before anything loads (the dtype, a
local directory's pipeline class and component folders), and `read_pipeline`, which reads a
diffusers pipeline's folders with one revision, variant and dtype and returns the components
`DiffusionPolicy` takes. A family's loader names its folders and builds its model; nothing else."""

import json
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from diffusers import ModelMixin

from rlft.checks import MissingWeights
from rlft.models.fingerprint import base_fingerprint
from rlft.models.hub import check_hub_weights


# How the VAE decodes a chunk (`model.vae_decode`): what diffusers' VAEs offer to cut its peak memory.
VAE_DECODES = ("whole", "sliced", "tiled")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# A pipeline class (a directory's model_index.json) -> the model configs that load it.
FAMILY_CHOICES = {
    "StableDiffusionPipeline": "model=stable_diffusion, sd15 or sd21",
    "StableDiffusion3Pipeline": "model=sd3, sd35_medium or sd35_large",
    "FluxPipeline": "model=flux_dev or flux_schnell",
    "StableDiffusionXLPipeline": "model=sdxl",
    "QwenImagePipeline": "model=qwen_image",
    "WanPipeline": "model=wan21_t2v_1_3b (or wan)",
    "Flux2KleinPipeline": "model=flux2_klein_4b",
}


def vae_torch_dtype(vae_dtype: str | None) -> torch.dtype | None:
    """`model.vae_dtype`: null (the pipeline's dtype) or one of DTYPES."""
    if vae_dtype is None:
        return None
    if vae_dtype not in DTYPES:
        raise ValueError(f"model.vae_dtype={vae_dtype!r} is invalid: must be null (model.dtype) or one of {sorted(DTYPES)}")
    return DTYPES[vae_dtype]


def check_pipeline_class(path: Path, expected: str, choice: str) -> None:
    """A local pipeline directory's `model_index.json` names its pipeline class: a directory of
    another model family is refused before anything is loaded."""
    index = path / "model_index.json"
    if not index.is_file():
        return  # the component check that follows names what is missing
    found = json.loads(index.read_text()).get("_class_name")
    if found != expected:
        raise ValueError(
            f"model.pretrained={str(path)!r} holds a {found}, not a {expected}: choose the model config of its family "
            f"({FAMILY_CHOICES.get(found, 'no rlft model config loads it')}), not {choice}"
        )


def check_pipeline(pretrained: str, dtype: str, pipeline_class: str, choice: str, components: tuple[str, ...],
                   title: str, hint="") -> torch.dtype:
    """`model.dtype`, and for a local directory the pipeline class it holds and the component
    folders it must have, checked before anything loads; -> the torch dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is invalid: must be one of {sorted(DTYPES)}")
    local = Path(pretrained)
    if local.exists() or pretrained.startswith((".", "/")):
        check_pipeline_class(local, pipeline_class, choice)
        missing = [c for c in components if not (local / c).is_dir()]
        if missing:
            extra = hint(missing) if callable(hint) else hint  # e.g. SD3: "(or model.use_t5=false ...)"
            raise MissingWeights(
                f"model.pretrained={pretrained!r} is not a {title} pipeline directory: missing {missing}{extra} "
                f"(expected {list(components)}, as {pipeline_class}.save_pretrained writes)"
            )
    return DTYPES[dtype]


@contextmanager
def loading(title: str, pretrained: str, revision: str | None, variant: str | None):
    """A loader's from_pretrained calls: a failure names the model, the path and what was asked."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise MissingWeights(f"could not load {title} from model.pretrained={pretrained!r} "
                      f"(revision={revision}, variant={variant}): {error}") from error


class PipelineFiles:
    """A pipeline's folders as one loader reads them: `weights` (a diffusers or transformers model
    at the pipeline's dtype, or `dtype`), `frozen` (the same, without gradients, in eval mode),
    `files` (tokenizers, schedulers: no weights) and `config` (a class's config file)."""

    def __init__(self, pretrained: str, revision: str | None, variant: str | None, torch_dtype: torch.dtype):
        self.pretrained, self.revision, self.variant, self.torch_dtype = pretrained, revision, variant, torch_dtype

    def weights(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        # diffusers names the argument torch_dtype, transformers dtype
        key = "torch_dtype" if issubclass(cls, ModelMixin) else "dtype"
        return cls.from_pretrained(self.pretrained, subfolder=subfolder, variant=self.variant, revision=self.revision,
                                   **{key: dtype or self.torch_dtype})

    def frozen(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        return self.weights(cls, subfolder, dtype).requires_grad_(False).eval()

    def files(self, cls, subfolder: str):
        return cls.from_pretrained(self.pretrained, subfolder=subfolder, revision=self.revision)

    def config(self, cls, subfolder: str | None = None) -> dict:
        kwargs = {"subfolder": subfolder} if subfolder else {}
        return cls.load_config(self.pretrained, revision=self.revision, **kwargs)


# What `read_pipeline` reads the folders with: the files themselves, or, while `rlft memory` plans a
# run, their configs alone, built on the meta device (`rlft.memory.meta.MetaFiles`).
FILES: ContextVar[type] = ContextVar("FILES", default=PipelineFiles)


class PipelineRead:
    """What `read_pipeline` yields: the files to read, then `components(...)` for the policy."""

    def __init__(self, files: PipelineFiles, components: tuple[str, ...], dtype: str):
        self.files, self.parts, self.dtype = files, ("model_index.json", *components), dtype

    def components(self, denoiser, scheduler, model, gradient_checkpointing: bool, vae_decode: str = "whole",
                   **base) -> dict:
        """-> {denoiser, scheduler, model, base}: what `DiffusionPolicy` takes; `base`: the frozen
        model's fingerprint (of the files read, once they are in the cache), with `base`'s extra keys.
        `vae_decode` (`model.vae_decode`): whole batches, `sliced` (a sample at a time) or `tiled`
        (a sample at a time, in overlapping tiles: diffusers' VAE tiling, in time too for video)."""
        if gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()  # recompute activations in backward: memory for time
        if vae_decode not in VAE_DECODES:
            raise ValueError(f"model.vae_decode={vae_decode!r} is invalid: must be one of {list(VAE_DECODES)}")
        if vae_decode != "whole":
            model.vae.enable_slicing()
        if vae_decode == "tiled":
            model.vae.enable_tiling()
        f = self.files
        fingerprint = base_fingerprint(f.pretrained, self.parts, self.dtype, f.revision, f.variant)
        return {"denoiser": denoiser, "scheduler": scheduler, "model": model, "base": {**fingerprint, **base}}


@contextmanager
def read_pipeline(title: str, pipeline_class: str, choice: str, components: tuple[str, ...], pretrained: str,
                  revision: str | None, variant: str | None, dtype: str, hint=""):
    """Checks the pipeline before anything loads (`check_pipeline`), then yields a `PipelineRead`
    whose `files` the block reads; a failure to read names the model, the path and what was asked."""
    torch_dtype = check_pipeline(pretrained, dtype, pipeline_class, choice, components, title, hint)
    files = FILES.get()
    if files is PipelineFiles:
        check_hub_weights(pretrained, "model.pretrained", "model_index.json", revision)  # a hub id: cached or reachable
    with loading(title, pretrained, revision, variant):
        yield PipelineRead(files(pretrained, revision, variant, torch_dtype), components, dtype)
