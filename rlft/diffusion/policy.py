"""`DiffusionPolicy`: a text-conditioned diffusion model seen as an RL policy.

One policy for every model: the model family's interface (`rlft.models.base.DiffusionModel`)
encodes prompts, shapes latents, calls the denoiser and decodes; the sampler of the model's
scheduler (`rlft.diffusion.samplers`: the DDIM step or Flow-GRPO's flow SDE step) turns each
prediction into a Gaussian transition with a log-probability. The policy samples trajectories,
stores what PPO needs to recompute each transition's log-probability later, and recomputes it
with gradients. It never asks which family a model is.
"""

import tempfile

import torch
import torch.utils.checkpoint
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from torch import nn
from tqdm.auto import tqdm

from rlft.diffusion.embedding_store import SHARD, EmbeddingStore, encoder_key
from rlft.diffusion.gaussian import GaussianStep, gaussian_kl_equal_std
from rlft.diffusion.policy_config import CFG_GRADIENTS, check_policy
from rlft.diffusion.samplers import make_sampler, shifted_window
from rlft.types import PromptEmbeds, Trajectories



# None: the global RNG; one generator; or a list, one per sample of the batch.
Generator = torch.Generator | list[torch.Generator] | None


class DiffusionPolicy(nn.Module):
    """Denoiser (LoRA-adapted or fully trainable) + its model family's frozen parts.

    `model` is the family's interface (`rlft.models.base.DiffusionModel`): its text encoders,
    VAE, latent shape, denoiser call and decoding. `eta` (DDIM) and `noise_level` (flow) set the stochastic step's noise:
    None takes the family's public default; `sde_type` (flow): Flow-GRPO's SDE step or Flow-CPS.
    `sde_window` (with `sde_window_shift`, MixGRPO's moving window), `deterministic` and `ode_solver`: which
    steps are stochastic, and the solver of the others (`rlft.diffusion.samplers`). `cfg_gradient`:
    `both` CFG branches carry the gradient, or the `conditional` one only (flow_grpo). `latent_size` (None: the denoiser's own
    sample_size) sets the resolution sampled at. `base`: the loader's fingerprint of the
    frozen model (`rlft.models.fingerprint`), which checkpoints store in its place.

    `release_text_encoders`: once `cache_prompts` has encoded every prompt of a run, drop the
    text encoders from memory (T5-XXL alone is 9.5 GB in bfloat16); later prompts are refused.
    `embedding_cache`: the directory of the prompt embeddings' stores on disk
    (`rlft.diffusion.embedding_store`; None: a temporary one).

    `compile`: torch.compile the denoiser (True, or a dict of torch.compile's arguments),
    with static shapes: a batch smaller than one already compiled (with gradient or
    without) is padded up to it (`graph_batch`), so that a run compiles one graph per phase
    (sampling, training), not one more for each smaller last chunk. The padding rows are
    computed and discarded, and not counted as work.
    """

    check_config = staticmethod(check_policy)  # policy.* at composition (rlft.diffusion.policy_config)

    def __init__(
        self,
        denoiser: nn.Module,
        scheduler,
        model: nn.Module,
        num_steps: int = 20,
        guidance_scale: float = 3.0,
        eta: float | None = None,
        noise_level: float | None = None,
        sde_window: list[int] | None = None,
        sde_window_shift: dict | None = None,
        sde_type: str = "sde",
        deterministic: bool = False,
        ode_solver: str = "euler",
        cfg_gradient: str = "both",
        reduction: str = "mean",
        lora_rank: int | None = 4,
        lora_alpha: float | None = None,
        lora_target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0"),
        negative_prompt: str = "",
        latent_size: int | None = None,
        base: dict | None = None,
        compile: bool | dict = False,
        release_text_encoders: bool = True,
        embedding_cache: str | None = None,
    ):
        super().__init__()
        self.denoiser = denoiser
        # What checkpoints check on resume instead of storing the frozen weights (rlft.run.checkpoints).
        # (A plain dict: Hydra's instantiate hands `base` over as a DictConfig, which checkpoints must not hold.)
        self.base_fingerprint = {k: base[k] for k in base} if base else {
            "source": None, "revision": None, "variant": None, "dtype": None, "digest": None}
        self.adapter_settings = {"lora_rank": lora_rank, "lora_alpha": (lora_alpha or lora_rank) if lora_rank else None,
                                 "lora_target_modules": sorted(lora_target_modules) if lora_rank else None}
        self.scheduler = scheduler
        self.model = model.requires_grad_(False).eval()  # frozen: text encoders, VAE
        if model.guidance == "none" and guidance_scale != 1:
            raise ValueError(f"policy.guidance_scale={guidance_scale} is invalid: this model is step-distilled and takes "
                             "no guidance (its pipeline ignores the scale): use 1")
        self.num_steps = num_steps
        self.guidance_scale = guidance_scale
        if cfg_gradient not in CFG_GRADIENTS:
            raise ValueError(f"policy.cfg_gradient={cfg_gradient!r} is invalid: valid are {list(CFG_GRADIENTS)}")
        self.cfg_gradient = cfg_gradient
        self.reduction = reduction
        self.latent_size = latent_size or model.default_latent_size(denoiser)  # e.g. 64 for SD3 at 512x512
        self.unet_evaluations = 0  # the work done so far, counted by `predict` (work/unet_evals)
        self.record_means = False  # `sample` keeps each stochastic step's mean (GRPO-Guard needs the sampling-time ones)
        schedule = model.timestep_schedule(num_steps, self.latent_shape(1))
        self.sde_window = None if sde_window is None else list(sde_window)
        self.sde_window_shift = None if sde_window_shift is None else {k: sde_window_shift[k] for k in ("every", "stride")}
        if self.sde_window_shift is not None and sde_window is None:
            raise ValueError("policy.sde_window_shift moves the SDE window: set policy.sde_window=[start, stop] (its first "
                             "position; MixGRPO: [0, 4])")
        self.sampler = make_sampler(scheduler, num_steps, eta=eta, noise_level=noise_level, sde_window=sde_window,
                                    schedule=schedule, sde_type=sde_type, deterministic=deterministic,
                                    ode_solver=ode_solver)
        if lora_rank:
            self.denoiser.requires_grad_(False)
            self.denoiser.add_adapter(
                LoraConfig(
                    r=lora_rank,
                    lora_alpha=lora_alpha or lora_rank,
                    init_lora_weights="gaussian",  # B = 0: the adapted denoiser starts equal to the base
                    target_modules=list(lora_target_modules),
                )
            )
            # Trainable LoRA weights in float32 whatever the frozen base's dtype (fp16 on GPUs):
            # Adam's updates of size lr * 1e-3 would vanish in float16.
            for param in self.trainable_parameters():
                param.data = param.data.float()
        self.release_after_caching = release_text_encoders
        self.embedding_cache = embedding_cache
        self.embeddings: EmbeddingStore | None = None  # made by `cache_prompts`
        self.compiled = False
        self.compiled_batches = {}  # gradient enabled -> the batch sizes compiled graphs were built for
        if compile:
            self.compile_denoiser(compile if isinstance(compile, dict) else {})
        # The unconditional (negative-prompt) embedding of classifier-free guidance never
        # changes: encode it once.
        uncond = self.encode_prompts([negative_prompt])
        for name, value in zip(("uncond_tokens", "uncond_pooled", "uncond_mask"), uncond.fields()):
            self.register_buffer(name, value, persistent=False)

    def move_window(self, epoch: int) -> None:
        """MixGRPO: the SDE window of `epoch` (`sde_window_shift`); nothing without a shift."""
        if self.sde_window_shift is not None:
            self.sampler.set_window(shifted_window(self.sde_window, epoch, **self.sde_window_shift))

    def compile_denoiser(self, options: dict) -> None:
        """torch.compile the denoiser in place (`nn.Module.compile`: its state dict, LoRA
        export and checkpoints unchanged), static shapes unless `options` say otherwise."""
        self.denoiser.compile(**{"dynamic": False, **options})
        self.compiled = True

    def graph_batch(self, batch: int) -> int:
        """The batch size to run `batch` rows at under `compile`: the smallest one already
        compiled (with or without gradient, as now) that holds them, else `batch` itself,
        which compiles one graph more. So a phase whose first call is its largest (sampling
        chunks, PPO's micro-batches) compiles once, and a larger one elsewhere (evaluation)
        adds its own graph without making the others pad up to it."""
        sizes = self.compiled_batches.setdefault(torch.is_grad_enabled(), set())
        size = min((s for s in sizes if s >= batch), default=batch)
        sizes.add(size)
        return size

    @property
    def device(self) -> torch.device:
        return self.uncond_tokens.device

    @property
    def family(self) -> str:
        return self.sampler.family

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.denoiser.parameters() if p.requires_grad]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> PromptEmbeds:
        """Prompts -> embeddings (on the policy's device): from the store when `cache_prompts` has
        made one, else encoded."""
        if self.embeddings is None:
            return self.model.encode_prompts(list(prompts))
        missing = self.embeddings.missing(prompts)
        if missing and self.release_after_caching:
            raise ValueError(f"prompts {missing} were not among those this run encoded at its start, and its text "
                             "encoders are released (policy.release_text_encoders=false keeps them)")
        if missing:
            self.embeddings.write(missing, self.model.encode_prompts(missing))
        return self.embeddings.read(list(prompts)).map(lambda x: x.to(self.device))

    @torch.no_grad()
    def cache_prompts(self, prompts: list[str], writer: bool = True, barrier=None, progress: bool = False,
                      batch_size: int = 64) -> dict:
        """Encode each of a run's prompts once, in batches on the policy's device, into the embedding
        store of these text encoders (`rlft.diffusion.embedding_store`), reusing what an earlier run
        stored; then, if `release_text_encoders`, drop the text encoders. A prompt the model cannot
        encode fails here, before any work. Several processes: those with `writer` encode what is
        missing (one per node), the others wait at `barrier` and read it. Returns what it did."""
        if self.embedding_cache is None:
            self.embedding_cache = tempfile.mkdtemp(prefix="rlft-embeddings-")
        probe = PromptEmbeds(self.uncond_tokens, self.uncond_pooled, self.uncond_mask)
        store = EmbeddingStore(self.embedding_cache, encoder_key(self.model, self.base_fingerprint, probe))
        missing = store.missing(prompts)
        if writer and missing:
            for start in tqdm(range(0, len(missing), SHARD), desc="encoding prompts", unit="shard",
                              disable=not progress or len(missing) <= SHARD):
                shard = missing[start : start + SHARD]
                store.write(shard, PromptEmbeds.cat([self.model.encode_prompts(shard[i : i + batch_size])
                                                     for i in range(0, len(shard), batch_size)]))
        if barrier is not None:
            barrier()
            store.refresh()
        if still := store.missing(prompts):
            raise RuntimeError(f"{len(still)} prompts are missing from the embedding store {store.directory} after "
                               "its writers encoded them: give every node a policy.embedding_cache it can read")
        self.embeddings = store
        released = self.model.release_text_encoders() if self.release_after_caching else []
        unique = len(set(prompts))
        return {"prompts": unique, "encoded": len(missing) if writer else 0, "reused": unique - len(missing),
                "directory": str(store.directory), "released": released}

    def uncond_embeds(self, batch: int) -> PromptEmbeds:
        """The negative prompt's embedding, `batch` times (a view)."""
        return PromptEmbeds(self.uncond_tokens, self.uncond_pooled, self.uncond_mask).expand(batch)

    @property
    def batched_guidance(self) -> bool:
        """Classifier-free guidance's two branches in one call (not for guidance 1, nor for a
        model that takes the scale as an input: FLUX.1-dev's guidance embedding)."""
        return self.guidance_scale != 1.0 and self.model.guidance == "cfg"

    def splits_guidance(self, backward: bool) -> bool:
        """With gradient and `cfg_gradient=conditional`, CFG's unconditional branch runs in a call of
        its own without gradient (`guided_prediction`)."""
        return backward and self.batched_guidance and self.cfg_gradient == "conditional"

    def count_work(self, batch: int, backward: bool, recomputed: bool = False) -> None:
        """Work in UNet sample-evaluations: a forward is 1 per sample, one with grad 3 (its
        backward costs about two forwards), gradient checkpointing's recomputation 1 more,
        and CFG's two branches double it, but for the backward of an unconditional branch that
        carries no gradient (`splits_guidance`)."""
        branches = 2 if self.batched_guidance else 1
        with_grad = 1 if self.splits_guidance(backward) else branches
        self.unet_evaluations += batch * (branches * (1 + recomputed) + 2 * backward * with_grad)

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: PromptEmbeds) -> torch.Tensor:
        """The denoiser's output (noise or velocity) with classifier-free guidance, both
        branches in one batched call; counted in `unet_evaluations`."""
        self.count_work(len(latents), backward=torch.is_grad_enabled())
        return self.guided_prediction(latents, timesteps, prompt_embeds)

    def guided_prediction(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: PromptEmbeds) -> torch.Tensor:
        """`predict` without counting (gradient checkpointing calls it again in the backward)."""
        timesteps = torch.as_tensor(timesteps, device=latents.device).expand(len(latents))
        if self.compiled:
            size = self.graph_batch(len(latents))
            if size > len(latents):  # a smaller last chunk runs in a graph already compiled for a larger one
                pad = lambda x: torch.cat([x, x[:1].expand(size - len(latents), *x.shape[1:])])
                return self.guided_prediction(pad(latents), pad(timesteps), prompt_embeds.padded(size))[: len(latents)]
        if self.splits_guidance(torch.is_grad_enabled()):
            # No gradient through the unconditional branch (flow_grpo detaches it after one batched
            # call): a call of its own without gradient keeps no activations for it, and the backward
            # pass covers the conditional batch only (a third less work per training step).
            with torch.no_grad():
                out_uncond = self.denoiser_outputs(latents, timesteps, self.uncond_embeds(len(latents)), branch=True)
            out_cond = self.denoiser_outputs(latents, timesteps, prompt_embeds, branch=True)
            return self.model.combine_guidance(out_uncond, out_cond, self.guidance_scale)
        out = self.denoiser_outputs(latents, timesteps, prompt_embeds)
        if not self.batched_guidance:
            return out
        out_uncond, out_cond = out.chunk(2)
        return self.model.combine_guidance(out_uncond, out_cond, self.guidance_scale)

    def denoiser_outputs(self, latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: PromptEmbeds,
                         denoiser=None, branch: bool = False) -> torch.Tensor:
        """The denoiser's call and nothing around it: with batched guidance both branches in one
        batch (unconditional, then conditional: (2B, ...)), else the model's own guided call (B, ...).
        `branch`: one branch of CFG alone, on `prompt_embeds` as given (B, ...).
        `denoiser`: what to call instead of `self.denoiser` (`rlft speed`: its eager `forward`)."""
        denoiser = denoiser or self.denoiser
        dtype = self.denoiser.dtype
        timesteps = torch.as_tensor(timesteps, device=latents.device).expand(len(latents))
        if branch:
            return self.model.denoise(denoiser, latents.to(dtype), timesteps, prompt_embeds.to(dtype))
        if not self.batched_guidance:
            return self.model.denoise(denoiser, latents.to(dtype), timesteps, prompt_embeds.to(dtype),
                                      guidance_scale=self.guidance_scale)
        return self.model.denoise(
            denoiser,
            torch.cat([latents, latents]).to(dtype),
            torch.cat([timesteps, timesteps]),
            PromptEmbeds.cat([self.uncond_embeds(len(latents)), prompt_embeds]).to(dtype),
        )

    # `torch.func.functional_call(policy, weights, ...)` predicts with other weights (a reference).
    forward = predict

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        return self.model.latent_shape(self.denoiser, batch, self.latent_size)

    def initial_latents(self, batch: int, generator: Generator = None) -> torch.Tensor:
        return randn_tensor(self.latent_shape(batch), generator=generator, device=self.device, dtype=torch.float32)

    @torch.no_grad()
    def sample(self, prompts: list[str], generator: Generator = None, progress=False, decode: bool = True) -> Trajectories:
        """`generator`: None (the global RNG), one generator, or one per prompt
        (`rlft.diffusion.noise.sample_generators`: each sample's noise its own).
        `progress`: True shows a tqdm bar of the steps on a terminal; a bar (anything with
        `update()`, `rlft.run.progress`) is advanced once per step.
        `decode=False`: `images` is None, for the caller to decode elsewhere
        (`rlft.algorithms.scored_sampling`: behind the next chunk's sampling)."""
        embeds = self.encode_prompts(prompts)
        x = self.initial_latents(len(prompts), generator)
        latents, next_latents, log_probs, recorded, means = [], [], [], [], []
        timesteps = self.sampler.timesteps.to(x.device)
        solver = self.sampler.ode_solver()  # given the host's timesteps: DPM-Solver reads their values
        # A deterministic sampler records every step (DiffusionNFT trains on their timesteps), with
        # no log-probability (NaN); otherwise the stochastic steps are recorded.
        record_all = self.sampler.deterministic
        steps = progress if hasattr(progress, "update") else tqdm(total=len(timesteps), desc="denoising", leave=False,
                                                                   disable=None if progress else True)
        for i, t in enumerate(timesteps):
            prediction = self.predict(x, t, embeds)
            stochastic = self.sampler.is_stochastic(i)
            if stochastic:
                solver.observe(prediction, self.sampler.timesteps[i], x)
                step = self.sampler.step(prediction, t, x, generator=generator, reduction=self.reduction)
                x_next, log_prob, mean = step.prev_sample, step.log_prob, step.mean
            else:
                x_next = mean = solver.step(prediction, self.sampler.timesteps[i], x)
                log_prob = x.new_full((len(x),), float("nan"), dtype=torch.float32)
            if record_all or stochastic:
                latents.append(x)
                next_latents.append(x_next)
                log_probs.append(log_prob)
                recorded.append(t)
                if self.record_means:
                    means.append(mean)
            x = x_next
            steps.update()
        if steps is not progress:
            steps.close()
        return Trajectories(
            prompts=list(prompts),
            prompt_embeds=embeds,
            latents=torch.stack(latents, dim=1),
            next_latents=torch.stack(next_latents, dim=1),
            log_probs=torch.stack(log_probs, dim=1),
            timesteps=torch.stack(recorded).unsqueeze(0).expand(len(prompts), -1),
            images=self.decode(x) if decode else None,
            final_latents=x,
            means=torch.stack(means, dim=1) if self.record_means else None,
        )

    def sample_with_grad(
        self,
        prompts: list[str],
        grad_steps: int,
        reference=None,
        checkpoint: bool = True,
        generator: Generator = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample with the gradient kept through the last `grad_steps` denoising steps
        (truncated backpropagation; earlier steps run without a graph). Returns images
        (B, C, H', W') in [0, 1] and the KL (B,) to the `reference` policy
        (`rlft.diffusion.reference`: an adapter of the same denoiser) summed over the
        stochastic steps among those (a deterministic step has no Gaussian to compare).

        The KL at each step is that of the two Gaussians at the same x_t (reference evaluated
        without gradient), reduced like the log-probability.
        """
        embeds = self.encode_prompts(prompts)
        x = self.initial_latents(len(prompts), generator)
        kl = torch.zeros(len(prompts), device=x.device)
        timesteps = self.sampler.timesteps.to(x.device)
        solver = self.sampler.ode_solver()
        first_grad_step = len(timesteps) - grad_steps
        for i, t in enumerate(timesteps):
            with torch.set_grad_enabled(i >= first_grad_step):
                if i >= first_grad_step and checkpoint:
                    # Recompute the denoiser's activations in the backward pass: memory of one step, not all.
                    self.count_work(len(x), backward=True, recomputed=True)
                    prediction = torch.utils.checkpoint.checkpoint(self.guided_prediction, x, t, embeds, use_reentrant=False)
                else:
                    prediction = self.predict(x, t, embeds)
                if not self.sampler.is_stochastic(i):
                    x = solver.step(prediction, self.sampler.timesteps[i], x)
                    continue
                solver.observe(prediction.detach(), self.sampler.timesteps[i], x.detach())
                step = self.sampler.step(prediction, t, x, generator=generator, reduction=self.reduction)
                if i >= first_grad_step and reference is not None:
                    with torch.no_grad():
                        ref_prediction = reference.predict(self, x.detach(), t, embeds)
                        ref = self.sampler.step(ref_prediction, t, x.detach(), prev_sample=step.prev_sample)
                    kl = kl + gaussian_kl_equal_std(step.mean, ref.mean, step.std, self.reduction)
            x = step.prev_sample
        return self.decode(x), kl

    def log_prob(
        self, latents: torch.Tensor, next_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: PromptEmbeds
    ) -> torch.Tensor:
        """Log-probability (B,) of stored transitions under the current weights, with grad."""
        return self.transition(latents, next_latents, timesteps, prompt_embeds).log_prob

    def transition(
        self, latents: torch.Tensor, next_latents: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: PromptEmbeds,
        reference=None,
    ) -> GaussianStep:
        """The Gaussian of stored transitions (its mean, std and the log-probability of
        `next_latents`) under the current weights with grad, or under a `reference`
        (`rlft.diffusion.reference`) without."""
        if reference is None:
            prediction = self.predict(latents, timesteps, prompt_embeds)
        else:
            with torch.no_grad():
                prediction = reference.predict(self, latents, timesteps, prompt_embeds)
        return self.sampler.step(prediction, timesteps, latents, prev_sample=next_latents, reduction=self.reduction)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents -> images in [0, 1] (B, C, H', W'), or frames (B, F, C, H', W') for video."""
        return self.model.decode(latents)
