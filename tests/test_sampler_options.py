"""The policy's sampler options beyond Flow-GRPO's SDE step: Flow-CPS (`policy.sde_type=cps`) in
the policy and through the CLI."""

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from tests.conftest import tiny_components
from tests.test_end_to_end import FAMILY_RUN, finite_and_documented, run_rlft


def flow_policy(**options) -> DiffusionPolicy:
    return DiffusionPolicy(**tiny_components("flow"), **{"num_steps": 4, "guidance_scale": 1.0, **options})


def test_cps_trains_every_step_but_the_noiseless_last_and_recomputes_its_log_probs():
    torch.manual_seed(0)
    policy = flow_policy(sde_type="cps", noise_level=0.8)
    traj = policy.sample(["a 3", "a 7"], generator=torch.Generator().manual_seed(0))
    assert traj.log_probs.shape == (2, 3) and torch.isfinite(traj.log_probs).all()
    assert torch.equal(traj.timesteps[0], policy.sampler.timesteps[:3])
    with torch.no_grad():
        for j in range(3):
            recomputed = policy.log_prob(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
            assert torch.equal(recomputed, traj.log_probs[:, j])


def test_cps_with_a_window_of_only_the_last_step_or_on_a_ddim_model_is_refused():
    with pytest.raises(ValueError, match="holds only the step into sigma = 0"):
        flow_policy(sde_type="cps", sde_window=[3, 4])
    with pytest.raises(ValueError, match="keeps the schedule's coefficients already"):
        DiffusionPolicy(**tiny_components("ddim"), num_steps=4, sde_type="cps")


def test_grpo_with_cps_through_the_cli(tiny_flow_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=grpo", *FAMILY_RUN,
             "algorithm.group_size=4", "policy.sde_type=cps", "policy.noise_level=0.8", f"hydra.run.dir={run_dir}",
             cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert len(scalars["train/clipfrac"]) == 2


class MixGRPOStates:
    """MixGRPO's GRPOTrainingStates, progressive strategy, written out (fastvideo/utils/grpo_states.py):
    the window [cur, cur + size) moves after `iters_per_group` iterations by the stride (its
    `prog_overlap_step`) or, without overlap, by the window's size."""

    def __init__(self, iters_per_group, size, max_timesteps, overlap, overlap_step):
        self.iters, self.size, self.max, self.overlap, self.step = iters_per_group, size, max_timesteps, overlap, overlap_step
        self.cur = self.in_group = 0

    def current(self):
        return list(range(self.cur, min(self.cur + self.size, self.max)))

    def update(self):
        self.in_group += 1
        if self.in_group >= self.iters:
            self.in_group = 0
            self.cur += self.step if self.overlap else self.size


@pytest.mark.parametrize("overlap,stride", [(True, 1), (False, 4)])
def test_the_sliding_window_moves_as_mixgrpos_progressive_schedule(overlap, stride):
    from rlft.diffusion.samplers import shifted_window

    states = MixGRPOStates(iters_per_group=25, size=4, max_timesteps=23, overlap=overlap, overlap_step=1)
    for epoch in range(300 if overlap else 100):
        start, stop = shifted_window([0, 4], epoch, every=25, stride=stride)
        assert list(range(start, stop)) == states.current(), epoch
        states.update()


def test_the_policy_samples_in_the_moved_window():
    policy = flow_policy(num_steps=6, sde_window=[0, 2], sde_window_shift={"every": 2, "stride": 1}, ode_solver="dpm2")
    schedule = policy.sampler.timesteps
    for epoch, start in [(0, 0), (1, 0), (2, 1), (5, 2)]:
        policy.move_window(epoch)
        traj = policy.sample(["a 3"], generator=torch.Generator().manual_seed(0))
        assert torch.equal(traj.timesteps[0], schedule[start : start + 2]), epoch


def test_mixgrpo_through_the_cli(tiny_flow_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=grpo", *FAMILY_RUN,
             "algorithm.group_size=4", "policy.sde_window=[0,2]", "policy.sde_window_shift={every: 1, stride: 1}",
             "policy.ode_solver=dpm2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert [v for _, v in scalars["rollout/sde_window_start"]] == [0, 1]
