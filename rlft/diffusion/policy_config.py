"""The checks of `policy.*` (`DiffusionPolicy.check_config`), run at composition. The stochastic
step's settings belong to the model's family (model.family); what the algorithm may ask of the
sampler, the algorithm's class says (`moves_sde_window`, `needs_stochastic_steps`)."""

from omegaconf import DictConfig, OmegaConf

from rlft.checks import algorithm_class, as_config_error, check
from rlft.diffusion.ode import ODE_SOLVERS
from rlft.diffusion.samplers import FAMILIES, SDE_TYPES, check_sde_window, shifted_window

# Which branches of classifier-free guidance a gradient flows through: both (the exact gradient of
# the guided prediction) or the conditional one only (flow_grpo detaches the unconditional branch).
CFG_GRADIENTS = ("both", "conditional")


def check_policy(cfg: DictConfig, node: DictConfig, where: str) -> None:
    p = node
    check(p.num_steps >= 1, "policy.num_steps", p.num_steps, "must be an integer >= 1")
    check(p.guidance_scale >= 1, "policy.guidance_scale", p.guidance_scale, "must be >= 1 (1 disables guidance)")
    compile = p.get("compile", False)
    check(compile in (True, False, "auto") or isinstance(compile, DictConfig), "policy.compile", compile,
          "must be true, false, auto (on when the run's projected work exceeds compile_break_even) or a dict of "
          "torch.compile's arguments")
    check(p.reduction in ("mean", "sum"), "policy.reduction", p.reduction, "must be mean or sum (reduction=mean|sum)")
    check(p.lora_rank is None or p.lora_rank >= 1, "policy.lora_rank", p.lora_rank, "must be >= 1, or null for full fine-tuning")
    check_sampler(cfg, p)
    dtype = cfg.model.get("dtype", "float32")
    check(p.lora_rank is not None or dtype == "float32", "model.dtype", dtype,
          "must be float32 for full fine-tuning (policy.lora_rank=null); for speed use trainer.precision=16-mixed")


def check_sampler(cfg: DictConfig, p: DictConfig) -> None:
    family, algorithm = cfg.model.get("family", "ddim"), algorithm_class(cfg)
    check(family in FAMILIES, "model.family", family, f"must be one of {sorted(FAMILIES)}")
    own, other = ("eta", "noise_level") if family == "ddim" else ("noise_level", "eta")
    check(p.get(other) is None, f"policy.{other}", p.get(other),
          f"is a {'flow' if family == 'ddim' else 'DDIM'}-model setting, and model={cfg.model.name} is a {family} "
          f"model: set policy.{own} instead (or leave policy.{other} null)")
    if family == "ddim":
        check(p.eta is None or p.eta > 0, "policy.eta", p.eta,
              "must be > 0: eta=0 makes DDIM deterministic, with no log-probability for RL")
    else:
        check(p.noise_level is None or p.noise_level > 0, "policy.noise_level", p.noise_level,
              "must be > 0 (Flow-GRPO's default is 0.7): at 0 the flow step is the deterministic ODE step, "
              "with no log-probability for RL")
    with as_config_error():
        check_sde_window(None if p.sde_window is None else list(p.sde_window), p.num_steps)
    shift = p.get("sde_window_shift")
    if shift is not None:
        check(p.sde_window is not None, "policy.sde_window_shift", dict(shift),
              "moves the SDE window: set policy.sde_window=[start, stop] too (its first position; MixGRPO: [0, 4])")
        check(set(shift) == {"every", "stride"} and all(isinstance(shift[k], int) and shift[k] >= 1 for k in shift),
              "policy.sde_window_shift", dict(shift), "must be {every: epochs >= 1, stride: steps >= 1}")
        check(algorithm.moves_sde_window, "policy.sde_window_shift", dict(shift),
              f"moves the window between the epochs of the sampling-based algorithms; algorithm={cfg.algorithm.name} "
              "does not move it")
        last = shifted_window(list(p.sde_window), cfg.trainer.max_epochs - 1, shift.every, shift.stride)
        check(last[1] <= p.num_steps, "policy.sde_window_shift", dict(shift),
              f"moves policy.sde_window={list(p.sde_window)} to {last} by the last epoch ({cfg.trainer.max_epochs - 1}), "
              f"past policy.num_steps={p.num_steps}: shift less often or by less, or train fewer epochs")
    solver = p.get("ode_solver", "euler")
    check(solver in ODE_SOLVERS, "policy.ode_solver", solver, f"must be one of {list(ODE_SOLVERS)}")
    check(solver != "dpm2" or family == "flow", "policy.ode_solver", solver,
          f"is written for rectified-flow models, and model={cfg.model.name} is a {family} model: use euler "
          "(DDIM with eta 0)")
    sde_type = p.get("sde_type", "sde")
    check(sde_type in SDE_TYPES, "policy.sde_type", sde_type, f"must be one of {list(SDE_TYPES)}")
    check(sde_type == "sde" or family == "flow", "policy.sde_type", sde_type,
          f"is a flow-model step, and model={cfg.model.name} samples with DDIM, whose step (policy.eta) keeps the "
          "schedule's coefficients already: use sde")
    check(p.get("cfg_gradient", "both") in CFG_GRADIENTS, "policy.cfg_gradient", p.get("cfg_gradient"),
          f"must be one of {list(CFG_GRADIENTS)}")
    if p.get("deterministic"):
        name = cfg.algorithm.name  # the algorithm first: a window means nothing to one that needs noise
        check(not algorithm.needs_stochastic_steps, "policy.deterministic", True,
              f"samples without noise, so no step has a log-probability, and algorithm={name} trains on "
              f"log-probabilities: only algorithm=nft and awm (trained on the forward process) take deterministic samples")
        window = OmegaConf.to_container(p.sde_window, resolve=True) if OmegaConf.is_config(p.sde_window) else p.sde_window
        check(window is None, "policy.sde_window", window,
              "must be null with policy.deterministic=true: a deterministic sampler has no stochastic step")
