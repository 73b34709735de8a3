"""`python -m tests.embedding_rss MODEL_DIR STORE N`: peak resident memory (MB) of a process that
encodes N distinct prompts with a tiny SD3 pipeline (T5 at 256 tokens) into the embedding store and
then reads every one back in sampling-sized batches; prints one JSON line."""

import json
import resource
import sys

import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.sd3 import load_sd3


def words(i: int) -> str:
    return " ".join("abcdefghij"[int(d)] for d in str(i))  # prompt i, in the tiny tokenizer's alphabet


def main(model_dir: str, store: str, count: int) -> None:
    torch.set_num_threads(1)
    components = load_sd3(model_dir, dtype="float32")
    policy = DiffusionPolicy(**components, num_steps=2, embedding_cache=store)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prompts = [f"prompt {words(i)}" for i in range(count)]
    policy.cache_prompts(prompts)
    after_encoding = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_prompt = sum(x.numel() * x.element_size() for x in policy.encode_prompts(prompts[:1]).fields() if x is not None)
    for start in range(0, count, 32):
        policy.encode_prompts(prompts[start : start + 32])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"prompts": count, "rss_before_mb": before, "rss_after_encoding_mb": after_encoding,
                      "peak_rss_mb": peak, "embeddings_mb": per_prompt * count / 2**20}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
