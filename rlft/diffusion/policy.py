"""`DiffusionPolicy`: a text-conditioned diffusion model seen as an RL policy.

It samples trajectories with `ddim_step_with_logprob`, stores what PPO needs to recompute
each transition's log-probability later, and recomputes it with gradients.
"""

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from torch import nn
from tqdm.auto import tqdm

from rlft.diffusion.ddim import check_stochastic, ddim_step_with_logprob, gaussian_kl_equal_std


# None: the global RNG; one generator; or a list, one per sample of the batch.
Generator = torch.Generator | list[torch.Generator] | None


@dataclass
class Trajectories:
    """A batch of sampled trajectories. B samples, T denoising steps."""

    prompts: list[str]
    prompt_embeds: torch.Tensor  # (B, L, D)
    latents: torch.Tensor  # (B, T, C, H, W): x_t before each step
    next_latents: torch.Tensor  # (B, T, C, H, W): x_t' after each step
    log_probs: torch.Tensor  # (B, T)
    timesteps: torch.Tensor  # (B, T)
    images: torch.Tensor  # (B, C, H', W') in [0, 1]

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def cat(cls, parts: list["Trajectories"]) -> "Trajectories":
        return cls(
            prompts=[p for part in parts for p in part.prompts],
            **{
                name: torch.cat([getattr(part, name) for part in parts])
                for name in ("prompt_embeds", "latents", "next_latents", "log_probs", "timesteps", "images")
            },
        )


class DiffusionPolicy(nn.Module):
    """UNet (LoRA-adapted or fully trainable) + frozen prompt encoder (+ frozen VAE).

    `prompt_encoder` is any module with `encode(list[str]) -> (B, L, D)`. Without a `vae`
    the model works in pixel space with values in [-1, 1] (the embedded default).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDIMScheduler,
        prompt_encoder: nn.Module,
        vae: nn.Module | None = None,
        num_steps: int = 20,
        guidance_scale: float = 3.0,
        eta: float = 1.0,
        reduction: str = "mean",
        lora_rank: int | None = 4,
        lora_alpha: float | None = None,
        lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
        negative_prompt: str = "",
    ):
        super().__init__()
        self.unet = unet
        self.scheduler = scheduler
        self.prompt_encoder = prompt_encoder.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval() if vae is not None else None
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        self.eta = eta
        self.reduction = reduction
        self.scheduler.set_timesteps(num_steps)
        check_stochastic(self.scheduler)
        if lora_rank:
            self.unet.requires_grad_(False)
            self.unet.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha or lora_rank,
                    init_lora_weights="gaussian",  # B = 0: the adapted UNet starts equal to the base
                    target_modules=list(lora_target_modules),
                )
            )
            # Trainable LoRA weights in float32 whatever the frozen base's dtype (fp16 on GPUs):
            # Adam's updates of size lr * 1e-3 would vanish in float16.
            for param in self.trainable_parameters():
                param.data = param.data.float()
        # The unconditional (negative-prompt) embedding of classifier-free guidance never
        # changes: encode it once.
        with torch.no_grad():
            self.register_buffer("uncond_embed", prompt_encoder.encode([negative_prompt]), persistent=False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder.encode(prompts)

    def predict_noise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor, unet: nn.Module | None = None
    ) -> torch.Tensor:
        """UNet output with classifier-free guidance, both branches in one batched call.
        `unet` replaces the policy's own (a frozen reference copy for SEIKO's KL)."""
        unet = unet or self.unet
        dtype = unet.dtype
        if self.guidance_scale == 1.0:
            return unet(latents.to(dtype), timesteps, prompt_embeds.to(dtype)).sample
        uncond = self.uncond_embed.expand(len(latents), -1, -1)
        timesteps = torch.as_tensor(timesteps, device=latents.device).expand(len(latents))
        out = unet(
            torch.cat([latents, latents]).to(dtype),
            torch.cat([timesteps, timesteps]),
            torch.cat([uncond, prompt_embeds]).to(dtype),
        ).sample
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + self.guidance_scale * (out_cond - out_uncond)

    def initial_latents(self, batch: int, generator: Generator = None) -> torch.Tensor:
        cfg = self.unet.config
        shape = (batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
        return randn_tensor(shape, generator=generator, device=self.uncond_embed.device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: Generator = None, progress: bool = False) -> Trajectories:
        """`generator`: None (the global RNG), one generator, or one per prompt
        (`rlft.diffusion.noise.sample_generators`: each sample's noise its own)."""
        embeds = self.encode_prompts(prompts)
        x = self.initial_latents(len(prompts), generator)
        latents, next_latents, log_probs = [], [], []
        timesteps = self.scheduler.timesteps.to(x.device)
        for t in tqdm(timesteps, desc="denoising", leave=False, disable=None if progress else True):
            noise_pred = self.predict_noise(x, t, embeds)
            step = ddim_step_with_logprob(
                self.scheduler, noise_pred, t, x, eta=self.eta, generator=generator, reduction=self.reduction
            )
            latents.append(x)
            next_latents.append(step.prev_sample)
            log_probs.append(step.log_prob)
            x = step.prev_sample
        return Trajectories(
            prompts=list(prompts),
            prompt_embeds=embeds,
            latents=torch.stack(latents, dim=1),
            next_latents=torch.stack(next_latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            timesteps=timesteps.unsqueeze(0).expand(len(prompts), -1),
            images=self.decode(x),
        )

    def sample_with_grad(
        self,
        prompts: list[str],
        grad_steps: int,
        reference_unet: nn.Module | None = None,
        checkpoint: bool = True,
        generator: Generator = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample with the gradient kept through the last `grad_steps` denoising steps
        (truncated backpropagation; earlier steps run without a graph). Returns images
        (B, C, H', W') in [0, 1] and the KL (B,) to `reference_unet` summed over those steps.

        The KL at each step is that of the two DDIM Gaussians at the same x_t (reference
        evaluated without gradient), reduced like the log-probability.
        """
        embeds = self.encode_prompts(prompts)
        x = self.initial_latents(len(prompts), generator)
        kl = torch.zeros(len(prompts), device=x.device)
        timesteps = self.scheduler.timesteps.to(x.device)
        first_grad_step = len(timesteps) - grad_steps
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(i >= first_grad_step):
                if i >= first_grad_step and checkpoint:
                    # Recompute the UNet's activations in the backward pass: memory of one step, not all.
                    noise_pred = torch.utils.checkpoint.checkpoint(self.predict_noise, x, t, embeds, use_reentrant=False)
                else:
                    noise_pred = self.predict_noise(x, t, embeds)
                step = ddim_step_with_logprob(
                    self.scheduler, noise_pred, t, x, eta=self.eta, generator=generator, reduction=self.reduction
                )
                if i >= first_grad_step and reference_unet is not None:
                    with torch.no_grad():
                        ref_pred = self.predict_noise(x.detach(), t, embeds, unet=reference_unet)
                        ref = ddim_step_with_logprob(
                            self.scheduler, ref_pred, t, x.detach(), eta=self.eta, prev_sample=step.prev_sample
                        )
                    kl = kl + gaussian_kl_equal_std(step.mean, ref.mean, step.std, self.reduction)
            x = step.prev_sample
        return self.decode(x), kl

    @torch.no_grad()
    def sample_batched(
        self, prompts: list[str], batch_size: int, generator: Generator = None,
        progress: bool = False, desc: str = "sampling",
    ) -> Trajectories:
        """`sample` in chunks of `batch_size` (memory), with a progress bar on a terminal.
        A list of generators (one per prompt) is split with the prompts."""
        chunks = range(0, len(prompts), batch_size)
        part = lambda i: generator[i : i + batch_size] if isinstance(generator, list) else generator
        return Trajectories.cat([
            self.sample(prompts[i : i + batch_size], generator=part(i))
            for i in tqdm(chunks, desc=desc, leave=False, disable=None if progress else True)
        ])

    def log_prob(
        self, latents: torch.Tensor, next_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor
    ) -> torch.Tensor:
        """Log-probability (B,) of stored transitions under the current weights, with grad."""
        noise_pred = self.predict_noise(latents, timesteps, prompt_embeds)
        step = ddim_step_with_logprob(
            self.scheduler, noise_pred, timesteps, latents, eta=self.eta, prev_sample=next_latents, reduction=self.reduction
        )
        return step.log_prob

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> images in [0, 1]."""
        if self.vae is None:
            return ((latents + 1) / 2).clamp(0, 1)
        scaled = latents / self.vae.config.scaling_factor
        return ((self.vae.decode(scaled.to(self.vae.dtype)).sample.float() + 1) / 2).clamp(0, 1)
