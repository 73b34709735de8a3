import os
import tempfile

import pytest
import torch
from diffusers import UNet2DConditionModel

from rlft.data.digits import vocabulary
from rlft.models.digits import DigitsModel, build_digits_flow_scheduler, build_digits_scheduler
from rlft.models.prompt_encoder import WordPromptEncoder

os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# Runs keep prompt embeddings on disk (policy.embedding_cache): the suite's own store, not the user's.
os.environ.setdefault("RLFT_EMBEDDING_CACHE", tempfile.mkdtemp(prefix="rlft-test-embeddings-"))


def tiny_components(family: str = "ddim") -> dict:
    """A tiny text-conditioned model of the embedded model's layout (random weights); `flow`:
    the same network with the rectified-flow scheduler (model=digits_flow's layout)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4,
    )
    return {
        "denoiser": unet,
        "scheduler": build_digits_scheduler() if family == "ddim" else build_digits_flow_scheduler(),
        "model": DigitsModel(WordPromptEncoder(vocab=vocabulary(), embed_dim=8, max_length=4)),
    }


def save_tiny_model(path, family: str = "ddim"):
    """A tiny model saved in the layout `load_digits_model` reads (unet/, scheduler/, text_encoder/)."""
    components = tiny_components(family)
    components["denoiser"].save_pretrained(path / "unet")
    components["scheduler"].save_pretrained(path / "scheduler")
    components["model"].prompt_encoder.save_pretrained(path / "text_encoder")
    return path


@pytest.fixture
def tiny_model_dir(tmp_path):
    return save_tiny_model(tmp_path)


@pytest.fixture
def tiny_flow_model_dir(tmp_path):
    return save_tiny_model(tmp_path / "flow", "flow")
