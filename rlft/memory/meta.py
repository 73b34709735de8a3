"""A model config's components built on the `meta` device: shapes and dtypes, no weights and no
memory, through the family's own loader (`rlft.models.*.load_*`), whose `read_pipeline` reads the
folders with `MetaFiles` while `on_meta_device()` is in force. The configs come from the model
directory (or the hub cache), else from the published architectures rlft ships
(`rlft.memory.architectures`). Tokenizers are stood in for by `PlanningTokenizer`."""

import json
import math
from contextlib import contextmanager
from contextvars import ContextVar

import diffusers
import torch
from transformers import BatchEncoding

from rlft.memory.architectures import PUBLISHED
from rlft.models.fingerprint import local_directory
from rlft.models.loading import FILES

# Changes to the architectures built, per folder: {"transformer": {"num_layers": 2}} builds FLUX.1 at
# its real width with fewer blocks (`architecture(...)`; `rlft.tools.gpu_check`).
CHANGES: ContextVar[dict] = ContextVar("CHANGES", default={})

# A planned prompt's length where the tokenizer does not pad to a fixed length (Qwen-Image's
# Qwen2.5-VL keeps each prompt's own): about 4 characters a token.
CHARS_PER_TOKEN = 4


class PlanningTokenizer:
    """Token ids of the lengths a pipeline asks for (its `max_length` when it pads to it, else the
    text's length at `CHARS_PER_TOKEN`), so that the text encoders run on the meta device at the
    real sequence lengths."""

    def __init__(self, model_max_length: int):
        self.model_max_length = model_max_length
        self.pad_token_id, self.eos_token_id = 0, 1
        self.added_tokens_encoder = {}  # diffusers' textual-inversion check reads it

    def __call__(self, text, padding=False, max_length=None, truncation=False, return_tensors="pt", **_):
        texts = [text] if isinstance(text, str) else list(text)
        if padding == "max_length":
            length = max_length or self.model_max_length
        else:
            length = max(math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts)
            if truncation and max_length:
                length = min(length, max_length)
        ids = torch.ones(len(texts), length, dtype=torch.long)
        return BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})

    def tokenize(self, text: str, **_):
        return ["x"] * math.ceil(len(text) / CHARS_PER_TOKEN)

    def batch_decode(self, ids, **_):
        return [""] * len(ids)

    def apply_chat_template(self, messages, tokenize=False, **_):
        return " ".join(str(m["content"]) for m in (messages if isinstance(messages[0], dict) else messages[0]))


class MetaFiles:
    """`rlft.models.loading.PipelineFiles`'s interface, building instead of reading."""

    def __init__(self, pretrained: str, revision: str | None, variant: str | None, torch_dtype: torch.dtype):
        self.pretrained, self.revision, self.variant, self.torch_dtype = str(pretrained), revision, variant, torch_dtype
        self.directory = local_directory(self.pretrained, revision)
        if self.directory is None and self.pretrained not in PUBLISHED:
            raise ValueError(f"model.pretrained={self.pretrained!r}: its weights are not on this machine and rlft ships "
                             f"no architecture of it to plan from (it has {sorted(PUBLISHED)}): give a model directory")

    device = "meta"

    def read(self, folder: str) -> dict:
        return {**self.read_file(folder), **CHANGES.get().get(folder, {})}

    def read_file(self, folder: str) -> dict:
        if self.directory is None:
            return dict(PUBLISHED[self.pretrained][folder])
        path = self.directory / folder
        for name in ("config.json", "scheduler_config.json", "tokenizer_config.json"):
            if (path / name).is_file():
                return json.loads((path / name).read_text())
        return json.loads(path.read_text())  # model_index.json

    def weights(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        config = {k: v for k, v in self.read(subfolder).items() if not k.startswith("_") or k == "_attn_implementation"}
        with torch.device(self.device):
            if issubclass(cls, diffusers.ModelMixin):
                model = cls.from_config(config)
            else:
                model = cls(cls.config_class(**config, attn_implementation="sdpa"))
        return model.to(dtype or self.torch_dtype)

    def frozen(self, cls, subfolder: str, dtype: torch.dtype | None = None):
        return self.weights(cls, subfolder, dtype).requires_grad_(False).eval()

    def files(self, cls, subfolder: str):
        config = self.read(subfolder)
        if hasattr(cls, "from_config") and issubclass(cls, diffusers.SchedulerMixin):
            return cls.from_config(config)
        return PlanningTokenizer(int(min(config.get("model_max_length", 77), 10**6)))

    def config(self, cls, subfolder: str | None = None) -> dict:
        return self.read(subfolder or "model_index.json")




@contextmanager
def architecture(changes: dict):
    """Within it, the planned or random-weight models take `changes` to their configs (`CHANGES`)."""
    token = CHANGES.set(changes)
    try:
        yield
    finally:
        CHANGES.reset(token)


@contextmanager
def random_weights(device: str = "cuda"):
    """Within it, the family loaders build their components with random weights on `device` (and
    planned tokenizers): the real architectures, at their real size, with nothing downloaded
    (`rlft.tools.gpu_check`)."""
    token = FILES.set(type("RandomFiles", (MetaFiles,), {"device": device}))
    try:
        yield
    finally:
        FILES.reset(token)


@contextmanager
def on_meta_device():
    """Within it, the family loaders build their components on the meta device, and transformers'
    attention masks of planned prompts (all ones: `PlanningTokenizer`) are skipped as transformers
    skips them for real ones, without reading the values (a meta tensor has none)."""
    from transformers import masking_utils

    import torch.fx.experimental._config as fx_config

    token = FILES.set(MetaFiles)
    assume, fx_config.meta_nonzero_assume_all_nonzero = fx_config.meta_nonzero_assume_all_nonzero, True  # the masks are ones
    # (owner, attribute, stand-in): what reads a mask's values, for masks of ones
    patches = [(masking_utils, name, lambda *args, **kwargs: True)
               for name in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa")]
    patches.append((diffusers.QwenImagePipeline, "_extract_masked_hidden", lambda self, hidden, mask: list(hidden)))
    tensor_all = torch.Tensor.all
    patches.append((torch.Tensor, "all", lambda self, *args, **kwargs: (
        torch.tensor(True) if self.device.type == "meta" and not self.is_floating_point() else tensor_all(self, *args, **kwargs))))
    originals = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]  # None: inherited
    for owner, name, stand_in in patches:
        setattr(owner, name, stand_in)
    try:
        yield
    finally:
        FILES.reset(token)
        fx_config.meta_nonzero_assume_all_nonzero = assume
        for owner, name, original in originals:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
