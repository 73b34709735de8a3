"""A run's UNet work projected from its config, and `policy.compile=auto`'s choice.

The unit is that of `work/unet_evals` (`DiffusionPolicy.count_work`): a denoiser forward is 1
per sample, one with gradient 3, classifier-free guidance's two branches double it. Each
algorithm projects its own work (`projected_unet_evals` on its class: the online algorithms'
sampling and trained steps in `rlft.algorithms.pipeline`, with the extra forwards each loss
takes; SEIKO's rounds in `rlft.algorithms.seiko`); it is a projection for a decision, not the
count (the run logs that).

`policy.compile=auto` compiles the denoiser when the projected work exceeds
`compile_break_even` evaluations: the work above which the time compiling saves
(compiled calls being faster) exceeds the time compiling takes. `rlft speed` measures it on the
machine it runs on (`compile_break_even_unet_evals` in speed.json).
"""

import logging

from omegaconf import DictConfig

from rlft.checks import algorithm_class

log = logging.getLogger(__name__)


def projected_unet_evals(cfg: DictConfig, batched_guidance: bool) -> float:
    """The run's projected UNet work: the algorithm's class projects its own
    (`projected_unet_evals(cfg, cfg_factor)`), CFG's two branches doubling each evaluation."""
    return algorithm_class(cfg).projected_unet_evals(cfg, 2 if batched_guidance else 1)


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
