"""The deterministic solvers (`rlft.diffusion.ode`): DPM-Solver++(2M) on a flow schedule against
diffusers' own multistep DPM solver on the same sigmas, its order of accuracy on an ODE whose
solution is known, and the deterministic sampler of the policy."""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from rlft.diffusion.ode import DPMSolver2
from rlft.diffusion.policy import DiffusionPolicy
from rlft.diffusion.samplers import make_sampler
from tests.conftest import tiny_components


@pytest.fixture
def tiny_flow_policy():
    return lambda **options: DiffusionPolicy(**tiny_components("flow"), **{"num_steps": 5, "guidance_scale": 1.0, **options})


def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A smooth made-up velocity field (any will do for the comparison with diffusers)."""
    return torch.tanh(x) * (1 + sigma) - 0.3 * x + 0.1


def run_rlft(scheduler, x: torch.Tensor) -> list[torch.Tensor]:
    solver, out = DPMSolver2(scheduler), []
    for t, sigma in zip(scheduler.timesteps, scheduler.sigmas[:-1]):
        x = solver.step(velocity(x, float(sigma)), t, x)
        out.append(x)
    return out


def run_diffusers(scheduler, x: torch.Tensor) -> list[torch.Tensor]:
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++, order 2, midpoint, flow sigmas and flow
    prediction), given the flow scheduler's sigmas in place of its own schedule."""
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=2,
                                      algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
                                      final_sigmas_type="zero")
    dpm.set_timesteps(len(scheduler.timesteps))
    dpm.sigmas = scheduler.sigmas.clone()
    dpm.timesteps = scheduler.timesteps.clone()
    out = []
    for t, sigma in zip(dpm.timesteps, dpm.sigmas[:-1]):
        x = dpm.step(velocity(x, float(sigma)), t, x).prev_sample
        out.append(x)
    return out


@pytest.mark.parametrize("schedule", [{"shift": 3.0}, {"shift": 1.0, "sigmas": [0.9, 0.7, 0.55, 0.4, 0.25, 0.1]}])
def test_dpm2_equals_diffusers_multistep_dpm_solver_on_the_same_sigmas(schedule):
    """From sigma = 1 (the first steps first order) and from 0.9 (second order from the second step on)."""
    sigmas = schedule.pop("sigmas", None)
    scheduler = FlowMatchEulerDiscreteScheduler(**schedule)
    scheduler.set_timesteps(len(sigmas) if sigmas else 8, sigmas=sigmas)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ours, theirs = run_rlft(scheduler, x), run_diffusers(scheduler, x)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")
    assert not torch.equal(ours[-1], x)


def gaussian_flow(s: float):
    """Data x_0 ~ N(0, s^2), noise N(0, 1), x_t = (1 - t) x_0 + t eps: the exact velocity
    E[eps - x_0 | x_t] = (t - (1 - t) s^2) / var_t * x, var_t = (1 - t)^2 s^2 + t^2, and the ODE
    carries x_1 to x_1 * s exactly (each x_t / sqrt(var_t) is constant)."""
    var = lambda t: (1 - t) ** 2 * s**2 + t**2
    return lambda x, t: (t - (1 - t) * s**2) / var(t) * x


def final_error(solver_name: str, steps: int, s: float = 1.0) -> float:
    """|x - exact| after `steps` steps from sigma 0.95 to 0.05, equal steps in log-SNR (the
    solver's own variable; the step into sigma = 0 is left out, it is first order by design)."""
    lam = np.linspace(math.log(0.05 / 0.95), math.log(0.95 / 0.05), steps + 1)
    grid = list(1 / (1 + np.exp(lam)))  # sigma from lambda = log((1 - sigma) / sigma)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    sampler = make_sampler(scheduler, steps + 1, deterministic=True, ode_solver=solver_name, schedule={"sigmas": grid})
    v, solver = gaussian_flow(s), sampler.ode_solver()
    std = lambda sigma: math.sqrt((1 - sigma) ** 2 * s**2 + sigma**2)
    x = torch.tensor([std(0.95)], dtype=torch.float64)  # x_1 = 1's trajectory at sigma 0.95
    for t, sigma in list(zip(scheduler.timesteps, scheduler.sigmas[:-1]))[:steps]:
        x = solver.step(v(x, float(sigma)), t, x)
    return abs(float(x) - std(float(scheduler.sigmas[steps])))


def test_dpm2_is_second_order_and_euler_first_on_a_known_ode():
    euler = [final_error("euler", n) for n in (16, 32, 64)]
    dpm2 = [final_error("dpm2", n) for n in (16, 32, 64)]
    # Halving the step: Euler's error halves, DPM-Solver++(2M)'s falls about fourfold.
    assert all(1.8 < a / b < 2.2 for a, b in zip(euler, euler[1:])), euler
    assert all(3.3 < a / b < 4.7 for a, b in zip(dpm2, dpm2[1:])), dpm2
    assert dpm2[0] < euler[0] / 5


def test_the_deterministic_sampler_records_every_step_without_a_log_probability(tiny_flow_policy):
    policy = tiny_flow_policy(deterministic=True, ode_solver="dpm2")
    traj = policy.sample(["a 3", "the number seven"], generator=torch.Generator().manual_seed(0))
    steps = len(policy.sampler.timesteps)
    assert traj.latents.shape[1] == traj.log_probs.shape[1] == steps
    assert torch.isnan(traj.log_probs).all()
    assert torch.equal(traj.timesteps[0], policy.sampler.timesteps)
    assert torch.equal(traj.next_latents[:, -1], traj.final_latents)
    again = policy.sample(["a 3", "the number seven"], generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.final_latents, traj.final_latents)  # no noise but the initial one


def test_deterministic_euler_sampling_is_diffusers_euler_loop(tiny_flow_policy):
    policy = tiny_flow_policy(deterministic=True, ode_solver="euler")
    traj = policy.sample(["a 3"], generator=torch.Generator().manual_seed(1))
    euler = FlowMatchEulerDiscreteScheduler.from_config(policy.scheduler.config)
    euler.set_timesteps(len(policy.sampler.timesteps))
    x = traj.latents[:, 0]
    embeds = policy.encode_prompts(["a 3"])
    with torch.no_grad():
        for t in euler.timesteps:
            x = euler.step(policy.predict(x, t, embeds), t, x).prev_sample
    torch.testing.assert_close(x, traj.final_latents, rtol=1e-5, atol=1e-6)


def test_a_deterministic_sampler_with_an_sde_window_or_an_unknown_solver_is_refused(tiny_flow_policy):
    with pytest.raises(ValueError, match="sde_window"):
        tiny_flow_policy(deterministic=True, sde_window=[0, 1])
    with pytest.raises(ValueError, match="not a solver: valid are"):
        tiny_flow_policy(ode_solver="heun")
