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
