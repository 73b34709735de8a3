"""A run's UNet work projected from its config, and `policy.compile=auto`'s choice.

The unit is that of `work/unet_evals` (`DiffusionPolicy.count_work`): a denoiser forward is 1
per sample, one with gradient 3, classifier-free guidance's two branches double it. The
projection counts what the online algorithms do per epoch (sampling every step of every
sample, then training `timestep_fraction` of the stochastic steps, `num_inner_epochs` times;
GRPO's KL adds a forward of the base, NFT's old policy one) and SEIKO's rounds (queries sampled
without gradient, fine-tuning through `truncation_steps` with gradient); it is a projection
for a decision, not the count (the run logs that).

`policy.compile=auto` compiles the denoiser when the projected work exceeds
`compile_break_even` evaluations: the work above which the time compiling saves
(compiled calls being faster) exceeds the time compiling takes. `rlft bench` measures it on the
machine it runs on (`compile_break_even_unet_evals` in bench.json).
"""

import logging
import math

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def projected_unet_evals(cfg: DictConfig, batched_guidance: bool) -> float:
    p, a, epochs = cfg.policy, cfg.algorithm, cfg.trainer.max_epochs
    steps = p.num_steps
    window = steps if p.get("sde_window") is None else p.sde_window[1] - p.sde_window[0]
    cfg_factor = 2 if batched_guidance else 1
    if a.name == "seiko":
        queries = sum(a.queries_per_round)
        fine_tuning = epochs * cfg.data.samples_per_epoch * ((steps - a.truncation_steps) + 4 * a.truncation_steps)
        return cfg_factor * (queries * steps + fine_tuning)
    trained = math.ceil(window * a.get("timestep_fraction", 1.0))
    # GRPO's KL: the base's forward; NFT: the old policy's forward, and the base's for its KL.
    per_trained_step = 3 + (1 if a.name in ("grpo", "nft") and a.get("kl_weight", 0) else 0) + (1 if a.name == "nft" else 0)
    per_sample = steps + trained * per_trained_step * a.get("num_inner_epochs", 1)
    return epochs * cfg.data.samples_per_epoch * cfg_factor * per_sample


def choose_compile(cfg: DictConfig, batched_guidance: bool):
    """`policy.compile` resolved: "auto" becomes true or false (logged with its reason); any other
    value is returned as it is."""
    choice = cfg.policy.get("compile", False)
    if choice != "auto":
        return choice
    work, break_even = projected_unet_evals(cfg, batched_guidance), cfg.compile_break_even
    compile = work > break_even
    log.info(f"policy.compile=auto: the run's projected UNet work, {work / 1e6:.3f}M evaluations, is "
             f"{'above' if compile else 'below'} the break-even of {break_even / 1e6:.3f}M "
             f"(compile_break_even): {'compiling' if compile else 'eager'}")
    return compile
