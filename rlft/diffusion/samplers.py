"""The two sampler steps behind one interface: which one a model uses follows from its
scheduler (DDIM for epsilon/v-prediction UNets, flow matching for rectified-flow models), so
the policy and the algorithms never branch on the model family.

An SDE window (`sde_window=[start, stop]`, step indices, Python slice semantics; null: every
step) makes only those steps stochastic: they carry a log-probability and are what PPO-style
algorithms train on. The other steps are deterministic (the Euler ODE step of a flow model,
eta = 0 DDIM, or the second-order `dpm2`: `rlft.diffusion.ode`) and are never trained on, as in
Flow-GRPO-Fast and MixGRPO: training cost falls with the window's length. `deterministic`: no
step is stochastic (DiffusionNFT's sampler: its loss needs no log-probability).

MixGRPO's sliding window (`policy.sde_window_shift={every, stride}`): the window moves `stride`
steps later every `every` epochs (`shifted_window`), its progressive schedule
(Tencent-Hunyuan/MixGRPO `fastvideo/utils/grpo_states.py`).
"""

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from rlft.diffusion.ddim import check_stochastic, ddim_mean_and_std, ddim_step_with_logprob
from rlft.diffusion.flow import flow_cps_step_with_logprob, flow_ode_step, flow_sde_step_with_logprob
from rlft.diffusion.gaussian import GaussianStep
from rlft.diffusion.ode import ODE_SOLVERS, DPMSolver2, EulerSolver

FAMILIES = {"ddim": DDIMScheduler, "flow": FlowMatchEulerDiscreteScheduler}
SDE_TYPES = ("sde", "cps")  # the flow models' stochastic step: Flow-GRPO's SDE, or Flow-CPS


def check_sde_window(sde_window, num_steps: int) -> range:
    """[start, stop] -> the range of stochastic step indices (all steps for None)."""
    if sde_window is None:
        return range(num_steps)
    window = list(sde_window)
    if len(window) != 2 or not all(isinstance(i, int) for i in window) or not 0 <= window[0] < window[1] <= num_steps:
        raise ValueError(
            f"policy.sde_window={window} is invalid: must be [start, stop] with 0 <= start < stop <= "
            f"policy.num_steps={num_steps} (step indices, stop exclusive), or null for every step"
        )
    return range(*window)


def shifted_window(sde_window, epoch: int, every: int, stride: int) -> list[int]:
    """MixGRPO's progressive window at `epoch`: [start, stop] moved `stride` steps later every
    `every` epochs (its `iters_per_group` and `prog_overlap_step`; stride = the window's size is its
    default, non-overlapping, schedule)."""
    offset = stride * (epoch // every)
    return [sde_window[0] + offset, sde_window[1] + offset]


class Sampler:
    """A scheduler's sampling chain: `timesteps` (T,), which steps are stochastic, and the
    two steps (`step`: a Gaussian with log-probability; `ode_step`: deterministic)."""

    family: str

    def __init__(self, scheduler, num_steps: int, sde_window=None, schedule: dict | None = None,
                 deterministic: bool = False, ode_solver: str = "euler"):
        self.scheduler = scheduler
        # `schedule`: the model family's own arguments of set_timesteps (FLUX: sigmas and its shift mu)
        scheduler.set_timesteps(num_steps, **(schedule or {}))
        if deterministic and sde_window is not None:
            raise ValueError(f"policy.sde_window={list(sde_window)} with policy.deterministic=true: a deterministic "
                             "sampler has no stochastic step; set one of them (sde_window=null)")
        self.deterministic, self.num_steps = deterministic, num_steps
        self.set_window(sde_window)
        if ode_solver not in ODE_SOLVERS:
            raise ValueError(f"policy.ode_solver={ode_solver!r} is not a solver: valid are {list(ODE_SOLVERS)}")
        if ode_solver == "dpm2" and self.family != "flow":
            raise ValueError("policy.ode_solver=dpm2 is written for rectified-flow models; this model samples with DDIM "
                             "(use policy.ode_solver=euler: DDIM with eta 0)")
        self.ode_solver_name = ode_solver

    def set_window(self, sde_window) -> None:
        """Which steps are stochastic from now on (MixGRPO's window moves between epochs)."""
        self.window = range(0) if self.deterministic else check_sde_window(sde_window, self.num_steps)

    def ode_solver(self):
        """A fresh deterministic solver for one batch of trajectories (`rlft.diffusion.ode`)."""
        return DPMSolver2(self.scheduler) if self.ode_solver_name == "dpm2" else EulerSolver(self)

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps

    def is_stochastic(self, index: int) -> bool:
        return index in self.window

    def step(self, model_output, timestep, sample, prev_sample=None, generator=None, reduction="mean") -> GaussianStep:
        raise NotImplementedError

    def ode_step(self, model_output, timestep, sample) -> torch.Tensor:
        raise NotImplementedError


class DDIMSampler(Sampler):
    """DDIM with noise `eta` (DDPO's policy); eta = 0 DDIM outside the SDE window."""

    family = "ddim"

    def __init__(self, scheduler: DDIMScheduler, num_steps: int, eta: float = 1.0, sde_window=None, schedule=None,
                 **options):
        super().__init__(scheduler, num_steps, sde_window, schedule, **options)
        self.eta = eta
        check_stochastic(scheduler)

    def step(self, model_output, timestep, sample, prev_sample=None, generator=None, reduction="mean") -> GaussianStep:
        return ddim_step_with_logprob(self.scheduler, model_output, timestep, sample, self.eta, prev_sample, generator, reduction)

    def ode_step(self, model_output, timestep, sample) -> torch.Tensor:
        return ddim_mean_and_std(self.scheduler, model_output, timestep, sample, eta=0.0)[0]


class FlowSDESampler(Sampler):
    """Flow-GRPO's SDE step (`sde_type=sde`) or Flow-CPS (`cps`) with `noise_level`; the Euler ODE
    step outside the SDE window, and for CPS at the step into sigma = 0 (which has no noise)."""

    family = "flow"

    def __init__(self, scheduler: FlowMatchEulerDiscreteScheduler, num_steps: int, noise_level: float = 0.7, sde_window=None,
                 schedule=None, sde_type: str = "sde", **options):
        super().__init__(scheduler, num_steps, sde_window, schedule, **options)
        if noise_level <= 0:
            raise ValueError(f"policy.noise_level={noise_level} is invalid: must be > 0 (Flow-GRPO's default is 0.7); "
                             "at 0 the step is the deterministic ODE step, with no log-probability")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"policy.sde_type={sde_type!r} is invalid: valid are {list(SDE_TYPES)}")
        self.noise_level, self.sde_type = noise_level, sde_type
        self.set_window(sde_window)

    def set_window(self, sde_window) -> None:
        super().set_window(sde_window)
        if getattr(self, "sde_type", "sde") == "cps":  # its step into sigma = 0 has no noise: deterministic
            self.window = [i for i in self.window if float(self.scheduler.sigmas[i + 1]) > 0]
            if not self.window and not self.deterministic:
                raise ValueError("policy.sde_type=cps: the SDE window holds only the step into sigma = 0, which has no "
                                 "noise under CPS; widen policy.sde_window")

    def step(self, model_output, timestep, sample, prev_sample=None, generator=None, reduction="mean") -> GaussianStep:
        step = flow_cps_step_with_logprob if self.sde_type == "cps" else flow_sde_step_with_logprob
        return step(self.scheduler, model_output, timestep, sample, self.noise_level, prev_sample, generator, reduction)

    def ode_step(self, model_output, timestep, sample) -> torch.Tensor:
        return flow_ode_step(self.scheduler, model_output, timestep, sample)


def family_of(scheduler) -> str:
    for family, cls in FAMILIES.items():
        if isinstance(scheduler, cls):
            return family
    raise TypeError(
        f"{type(scheduler).__name__} is not a supported scheduler: rlft samples with DDIMScheduler (epsilon, "
        "v- or sample-prediction models) or FlowMatchEulerDiscreteScheduler (rectified-flow models)"
    )


def make_sampler(scheduler, num_steps: int, eta: float | None = None, noise_level: float | None = None,
                 sde_window=None, schedule: dict | None = None, sde_type: str | None = None, **options) -> Sampler:
    """The sampler of the scheduler's family. `eta` belongs to DDIM, `noise_level` to flow
    models; None takes the public default (DDPO's eta 1.0, Flow-GRPO's noise level 0.7).
    `schedule`: extra arguments of the scheduler's `set_timesteps` (`DiffusionModel.timestep_schedule`).
    `sde_type` (flow models): `sde` (None) or `cps`. `options`: `deterministic`, `ode_solver` (`Sampler`)."""
    family = family_of(scheduler)
    if family == "ddim" and sde_type not in (None, "sde"):
        raise ValueError(f"policy.sde_type={sde_type} is a flow-model step; this model samples with DDIM, whose step "
                         "(policy.eta) keeps the schedule's coefficients already")
    if family == "ddim":
        if noise_level is not None:
            raise ValueError(f"policy.noise_level={noise_level} is a flow-model setting; this model samples with DDIM "
                             "(set policy.eta instead)")
        return DDIMSampler(scheduler, num_steps, 1.0 if eta is None else eta, sde_window, schedule, **options)
    if eta is not None:
        raise ValueError(f"policy.eta={eta} is a DDIM setting; this model is a rectified-flow model "
                         "(set policy.noise_level instead)")
    if sde_type is not None:
        options["sde_type"] = sde_type
    return FlowSDESampler(scheduler, num_steps, 0.7 if noise_level is None else noise_level, sde_window, schedule, **options)
