"""A word-level prompt encoder for the embedded digits model.

The embedded model needs text conditioning without downloading a tokenizer or a text
model, so prompts are split on whitespace and each word is looked up in a small closed
vocabulary. A word outside it is an error (a silently dropped word would make
"a handwritten seven" and "a handwritten" look the same to the model).
"""

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

PAD = "<pad>"


class WordPromptEncoder(ModelMixin, ConfigMixin):
    """Prompts -> (batch, max_length, embed_dim) embeddings for cross-attention.

    The empty prompt "" is all padding; it is the unconditional input of classifier-free
    guidance, so the padding embedding is learned rather than fixed at zero.
    """

    @register_to_config
    def __init__(self, vocab: list[str], embed_dim: int = 32, max_length: int = 4):
        super().__init__()
        self.word_to_id = {w: i + 1 for i, w in enumerate(vocab)}  # 0 is padding
        self.token_embedding = nn.Embedding(len(vocab) + 1, embed_dim)
        self.position_embedding = nn.Parameter(torch.zeros(max_length, embed_dim))
        self.norm = nn.LayerNorm(embed_dim)

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(prompts), self.config.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            words = prompt.lower().split()
            if len(words) > self.config.max_length:
                raise ValueError(
                    f"prompt {prompt!r} has {len(words)} words; this model encodes at most "
                    f"{self.config.max_length}"
                )
            unknown = [w for w in words if w not in self.word_to_id]
            if unknown:
                raise ValueError(
                    f"prompt {prompt!r} has words this model cannot encode: {unknown}; "
                    f"its vocabulary is {sorted(self.config.vocab)}"
                )
            ids[row, : len(words)] = torch.tensor([self.word_to_id[w] for w in words])
        return ids

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        # (B, L) -> (B, L, D)
        return self.norm(self.token_embedding(token_ids) + self.position_embedding)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        return self(self.tokenize(prompts).to(self.device))
