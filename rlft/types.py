"""The data that passes between the layers: what a model's text encoders give the denoiser
(`PromptEmbeds`) and what the sampler gives the algorithms (`Trajectories`). Below every module
that uses them (models, the policy, the algorithms, the tools), importing nothing of rlft."""

from dataclasses import dataclass

import torch


@dataclass
class PromptEmbeds:
    """What the denoiser is conditioned on: token embeddings for (cross- or joint) attention,
    pooled text embeddings (SD3, SDXL, FLUX) and the tokens' attention mask (Qwen-Image).
    Indexed like a batch."""

    tokens: torch.Tensor  # (B, L, D)
    pooled: torch.Tensor | None = None  # (B, P)
    mask: torch.Tensor | None = None  # (B, L): 1 for a real token, 0 for padding

    def __len__(self) -> int:
        return len(self.tokens)

    def fields(self) -> tuple:
        return self.tokens, self.pooled, self.mask

    def map(self, fn, mask: bool = True) -> "PromptEmbeds":
        """`fn` applied to every field that is set (`mask=False`: the mask is left as it is)."""
        tokens, pooled, attention = (None if x is None else fn(x) for x in self.fields())
        return PromptEmbeds(tokens, pooled, attention if mask else self.mask)

    def __getitem__(self, index) -> "PromptEmbeds":
        return self.map(lambda x: x[index])

    def expand(self, batch: int) -> "PromptEmbeds":
        """A batch-1 embedding repeated `batch` times (a view: no copy)."""
        return self.map(lambda x: x.expand(batch, *x.shape[1:]))

    def padded(self, batch: int) -> "PromptEmbeds":
        """The batch with its first row repeated up to `batch` rows (`DiffusionPolicy.compile`)."""
        return self.map(lambda x: torch.cat([x, x[:1].expand(batch - len(x), *x.shape[1:])]))

    def to(self, dtype: torch.dtype) -> "PromptEmbeds":
        return self.map(lambda x: x.to(dtype), mask=False)

    @staticmethod
    def cat(parts: list["PromptEmbeds"]) -> "PromptEmbeds":
        """The batches one after another. Masked embeddings of different lengths (Qwen-Image keeps
        each prompt's own length) are padded to the longest with zeros that the mask leaves out."""
        length = max(part.tokens.shape[1] for part in parts)
        if any(part.tokens.shape[1] != length for part in parts):
            if any(part.mask is None for part in parts):
                raise ValueError("prompt embeddings of different lengths need an attention mask to be batched")
            parts = [part.padded_to(length) for part in parts]
        columns = zip(*(part.fields() for part in parts))
        return PromptEmbeds(*(None if column[0] is None else torch.cat(column) for column in columns))

    def padded_to(self, length: int) -> "PromptEmbeds":
        """Tokens and mask padded with zeros (masked out) to `length` tokens."""
        extra = length - self.tokens.shape[1]
        pad = lambda x: torch.cat([x, x.new_zeros(x.shape[0], extra, *x.shape[2:])], dim=1)
        return PromptEmbeds(pad(self.tokens), self.pooled, pad(self.mask))


@dataclass
class Trajectories:
    """A batch of sampled trajectories: B samples, T stochastic steps (all denoising steps,
    or those of the SDE window)."""

    prompts: list[str]
    prompt_embeds: PromptEmbeds  # (B, ...)
    latents: torch.Tensor  # (B, T, *latent): x_t before each step; latent (C, H, W), or (C, F, H, W) for video
    next_latents: torch.Tensor  # (B, T, *latent): x_t' after each step
    log_probs: torch.Tensor  # (B, T)
    timesteps: torch.Tensor  # (B, T)
    images: torch.Tensor | None  # (B, C, H', W') in [0, 1]; None until decoded (`sample(decode=False)`)
    final_latents: torch.Tensor  # (B, *latent): the clean sample x_0 that `images` decode (DiffusionNFT trains on it)
    means: torch.Tensor | None = None  # (B, T, *latent): each step's Gaussian mean, kept when `record_means` (GRPO-Guard)

    def __len__(self) -> int:
        return len(self.prompts)

    def store(self, device: torch.device | str, dtype: torch.dtype | None = None) -> None:
        """Keep what the update reads back a micro-batch at a time (the latents of every step, the
        clean ones, the means, the prompt embeddings) and the images on `device` (host memory, pinned
        when a GPU is in use, so that they come back asynchronously), the latents in `dtype` (None:
        as sampled). Log-probabilities and timesteps stay where they are (small, and used whole)."""
        device = torch.device(device)
        pin = device.type == "cpu" and torch.cuda.is_available()
        place = lambda x, cast: None if x is None else (lambda y: y.pin_memory() if pin else y)(
            x.to(device, dtype if cast and dtype is not None else x.dtype))
        self.latents, self.next_latents = place(self.latents, True), place(self.next_latents, True)
        self.final_latents, self.means = place(self.final_latents, True), place(self.means, True)
        self.images = place(self.images, False)
        self.prompt_embeds = self.prompt_embeds.map(lambda x: place(x, False))

    def release_latents(self) -> None:
        """Keeps the prompts, images and per-step log-probabilities and timesteps; the latents (every
        step's, the final ones, the means) become empty (B, 0) tensors, their memory freed."""
        empty = lambda x: x.new_empty((len(x), 0))
        self.latents, self.next_latents, self.final_latents = empty(self.latents), empty(self.next_latents), empty(self.final_latents)
        self.means = None

    @classmethod
    def cat(cls, parts: list["Trajectories"]) -> "Trajectories":
        return cls(
            prompts=[p for part in parts for p in part.prompts],
            prompt_embeds=PromptEmbeds.cat([part.prompt_embeds for part in parts]),
            **{
                name: torch.cat([getattr(part, name) for part in parts])
                for name in ("latents", "next_latents", "log_probs", "timesteps", "images", "final_latents")
            },
            means=None if parts[0].means is None else torch.cat([part.means for part in parts]),
        )
