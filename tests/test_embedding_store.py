"""Prompt embeddings on disk (`rlft.diffusion.embedding_store`): reused by a repeated run, kept apart
per text encoders, shared between processes, and a host memory that does not grow with the prompts."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from rlft.diffusion.embedding_store import EmbeddingStore
from rlft.diffusion.policy import DiffusionPolicy
from rlft.types import PromptEmbeds
from tests.conftest import tiny_components
from tests.tiny_sd import save_tiny_sd3

PROMPTS = ["a handwritten 1", "a handwritten 2", "the number seven"]


def make_policy(store, **options) -> DiffusionPolicy:
    return DiffusionPolicy(**tiny_components("flow"), num_steps=2, embedding_cache=str(store), **options)


def test_a_repeated_run_reuses_the_store_and_reads_what_was_encoded(tmp_path):
    first = make_policy(tmp_path)
    fresh = first.encode_prompts(PROMPTS)
    done = first.cache_prompts(PROMPTS)
    assert (done["encoded"], done["reused"]) == (3, 0)
    again = make_policy(tmp_path)
    done = again.cache_prompts(PROMPTS + ["a handwritten 0"])
    assert (done["prompts"], done["encoded"], done["reused"]) == (4, 1, 3)
    assert len(list((tmp_path / first.embeddings.key).glob("*.safetensors"))) == 2  # a shard per encoding
    torch.testing.assert_close(again.encode_prompts(PROMPTS).tokens, fresh.tokens, rtol=0, atol=0)


def test_other_text_encoders_get_a_store_of_their_own(tmp_path):
    first = make_policy(tmp_path)
    first.cache_prompts(PROMPTS)
    other = tiny_components("flow")
    with torch.no_grad():
        next(other["model"].parameters()).add_(1.0)  # other encoder weights, same files otherwise
    second = DiffusionPolicy(**other, num_steps=2, embedding_cache=str(tmp_path))
    done = second.cache_prompts(PROMPTS)
    assert done["encoded"] == 3 and second.embeddings.key != first.embeddings.key
    assert not torch.equal(second.encode_prompts(PROMPTS).tokens, first.encode_prompts(PROMPTS).tokens)


def test_a_shard_of_other_encoders_is_refused_by_name(tmp_path):
    first = make_policy(tmp_path / "a")
    first.cache_prompts(PROMPTS)
    foreign = tmp_path / "b" / "0123456789abcdefghij"
    foreign.mkdir(parents=True)
    shard = next((tmp_path / "a" / first.embeddings.key).glob("*.safetensors"))
    shutil.copy(shard, foreign / shard.name)
    with pytest.raises(ValueError, match=f"{shard.name} holds embeddings of text encoders '{first.embeddings.key}'.*delete it"):
        EmbeddingStore(tmp_path / "b", foreign.name)


def test_processes_share_the_store_their_writer_fills(tmp_path):
    writer, reader = make_policy(tmp_path), make_policy(tmp_path)
    done = reader.cache_prompts(PROMPTS, writer=False, barrier=lambda: writer.cache_prompts(PROMPTS))
    assert done["encoded"] == 0 and done["prompts"] == 3  # the writer encoded them while the reader waited
    assert torch.equal(reader.encode_prompts(PROMPTS).tokens, writer.encode_prompts(PROMPTS).tokens)
    lonely = make_policy(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError, match="3 prompts are missing from the embedding store .*policy.embedding_cache"):
        lonely.cache_prompts(PROMPTS, writer=False, barrier=lambda: None)


def test_masked_embeddings_of_different_lengths_come_back_padded(tmp_path):
    store = EmbeddingStore(tmp_path, "k")
    short = PromptEmbeds(torch.randn(1, 2, 4), None, torch.ones(1, 2))
    long = PromptEmbeds(torch.randn(1, 5, 4), None, torch.ones(1, 5))
    store.write(["short"], short)
    store.write(["long"], long)
    read = EmbeddingStore(tmp_path, "k").read(["long", "short"])  # a new process: indexed from the files
    assert read.tokens.shape == (2, 5, 4) and read.mask.tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert torch.equal(read.tokens[1, :2], short.tokens[0]) and torch.equal(read.tokens[0], long.tokens[0])


def peak_rss(model_dir, store, count: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.embedding_rss", str(model_dir), str(store), str(count)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_host_memory_does_not_grow_with_the_prompt_count(tmp_path):
    """Peak RSS of encoding then reading back every prompt, tiny SD3 with T5 at 256 tokens (34 KB
    of float32 embeddings a prompt): 30k prompts (1 GB of embeddings) against 1k (33 MB)."""
    model = save_tiny_sd3(tmp_path / "sd3")
    small, large = peak_rss(model, tmp_path / "small", 1000), peak_rss(model, tmp_path / "large", 30_000)
    print(json.dumps([small, large]))
    assert large["embeddings_mb"] > 900
    assert large["peak_rss_mb"] - small["peak_rss_mb"] < 0.1 * large["embeddings_mb"], (small, large)
