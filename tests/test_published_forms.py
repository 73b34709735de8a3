"""The public forms rlft offers beside its exact ones, so that a published coefficient means what
it says: flow_grpo's KL term (`algorithm.kl_form=without_dt`) and its CFG gradient through the
conditional branch only (`policy.cfg_gradient=conditional`), each against formulas written here."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rlft.algorithms.grpo import grpo_loss
from rlft.algorithms.ppo_loss import ppo_clip_loss
from rlft.diffusion.flow import flow_sde_mean_and_std, step_sigmas
from rlft.diffusion.gaussian import kl_std
from rlft.diffusion.policy import DiffusionPolicy
from tests.conftest import tiny_components


def flow_grpo_std_dev_t(sigma: float, sigma_max: float, eta: float) -> float:
    """flow_grpo's `std_dev_t = sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * eta`."""
    return math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * eta


@pytest.mark.parametrize("index", [0, 3, 7])
def test_the_without_dt_kl_is_flow_grpos_term_and_the_exact_one_is_larger_by_one_over_the_step(index):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(index)
    x, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = scheduler.timesteps[index].expand(3)
    mean, std = flow_sde_mean_and_std(scheduler, v, t, x, noise_level=0.7)
    mean = mean.requires_grad_()
    ref_mean = mean.detach() + 0.05 * torch.randn(3, 2, 4, 4, generator=g)
    sigma, sigma_next = step_sigmas(scheduler, t)
    old_lp, new_lp, adv = torch.zeros(3), torch.zeros(3, requires_grad=True), torch.randn(3, generator=g)
    loss, stats = grpo_loss(new_lp, old_lp, adv, mean, ref_mean, kl_std(std, sigma, sigma_next, "without_dt"),
                            clip_range=0.2, kl_weight=0.04, reduction="mean")
    s = flow_grpo_std_dev_t(float(sigma[0]), float(scheduler.sigmas[1]), 0.7)
    # flow_grpo: ((mean - mean_ref)^2).mean(dim=(1, 2, 3), keepdim=True) / (2 * std_dev_t^2), then mean
    public = (((mean.detach() - ref_mean) ** 2).mean(dim=(1, 2, 3)) / (2 * s**2)).mean()
    torch.testing.assert_close(stats["kl"], public, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, ppo_clip_loss(new_lp, old_lp, adv, 0.2)[0] + 0.04 * public, rtol=1e-5, atol=1e-7)
    _, exact = grpo_loss(new_lp, old_lp, adv, mean, ref_mean, kl_std(std, sigma, sigma_next, "exact"), 0.2, 0.04, "mean")
    dt = float(sigma[0] - sigma_next[0])
    torch.testing.assert_close(exact["kl"] * dt, public, rtol=1e-5, atol=0)


def test_an_unknown_kl_form_is_refused():
    with pytest.raises(ValueError, match="valid are \\['exact', 'without_dt'\\]"):
        kl_std(torch.ones(1, 1), torch.ones(1), torch.zeros(1), "flow_grpo")


def test_cfg_gradient_conditional_flows_through_the_conditional_branch_only():
    torch.manual_seed(0)
    policies = {c: DiffusionPolicy(**tiny_components("flow"), num_steps=3, guidance_scale=3.0, lora_rank=2, cfg_gradient=c)
                for c in ("both", "conditional")}
    weights = [p.detach().clone() + 0.1 * torch.randn_like(p) for p in policies["both"].trainable_parameters()]
    x, t = torch.randn(2, 1, 8, 8), policies["both"].sampler.timesteps[1]
    grads, outs = {}, {}
    for name, policy in policies.items():
        with torch.no_grad():
            for p, w in zip(policy.trainable_parameters(), weights):
                p.copy_(w)
        embeds = policy.encode_prompts(["a 3", "a 7"])
        outs[name] = policy.predict(x, t, embeds)
        grads[name] = torch.autograd.grad(outs[name].pow(2).sum(), policy.trainable_parameters())
    torch.testing.assert_close(outs["both"], outs["conditional"])  # the same prediction
    # Written here: with the unconditional branch a constant, d/dtheta of (u + 3 (c - u))^2 is 2 out * 3 dc/dtheta.
    policy = policies["conditional"]
    embeds = policy.encode_prompts(["a 3", "a 7"])
    cond = policy.model.denoise(policy.denoiser, x, t.expand(2), embeds)
    want = torch.autograd.grad((2 * outs["conditional"].detach() * 3.0 * cond).sum(), policy.trainable_parameters())
    for got, w in zip(grads["conditional"], want):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(grads["both"], grads["conditional"]))


def test_grpo_with_flow_grpos_kl_and_cfg_gradient_through_the_cli(tiny_flow_model_dir, tmp_path):
    from tests.test_end_to_end import FAMILY_RUN, finite_and_documented, run_rlft

    run_dir = tmp_path / "run"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=grpo", *FAMILY_RUN,
             "algorithm.group_size=4", "algorithm.kl_form=without_dt", "policy.cfg_gradient=conditional", "algorithm.global_std=true",
             "model.guidance_scale=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    assert scalars["train/kl"][-1][1] > 0  # the second epoch's policy has moved from the base


def flow_factory_guard_ratio(log_prob, old_log_prob, mean, old_mean, std_dev_t, dt):
    """Flow-Factory's GRPOGuardTrainer: scale = sqrt(-dt) * std_dev_t, mse over the elements,
    ratio = exp((log_prob - old_log_prob) * scale + mse / (2 * scale))."""
    scale = torch.sqrt(-dt) * std_dev_t
    mse = (mean - old_mean).flatten(1).pow(2).mean(dim=1)
    return torch.exp((log_prob - old_log_prob) * scale + mse / (2 * scale))


def test_the_guard_ratio_is_flow_factorys_and_removes_the_ratios_bias():
    from rlft.algorithms.grpo import guard_log_ratio
    from rlft.diffusion.flow import flow_sde_step_with_logprob

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(5)
    x, v = torch.randn(2000, 1, 2, 2, generator=g), torch.randn(2000, 1, 2, 2, generator=g)
    t = scheduler.timesteps[3]
    old = flow_sde_step_with_logprob(scheduler, v, t, x, 0.7, generator=g)  # sampled by the old policy
    v_new = v + 0.3 * torch.randn(2000, 1, 2, 2, generator=g)  # the policy has moved
    new = flow_sde_step_with_logprob(scheduler, v_new, t.expand(2000), x, 0.7, prev_sample=old.prev_sample)
    got = guard_log_ratio(new.log_prob, old.log_prob, new.mean, old.mean, new.std, "mean")
    sigma, sigma_next = step_sigmas(scheduler, t.expand(2000))
    std_dev_t = flow_grpo_std_dev_t(float(sigma[0]), float(scheduler.sigmas[1]), 0.7)
    want = flow_factory_guard_ratio(new.log_prob, old.log_prob, new.mean, old.mean, torch.tensor(std_dev_t),
                                    sigma_next - sigma)
    torch.testing.assert_close(got.exp(), want, rtol=1e-4, atol=1e-6)
    # Written here: it is <eps, mean - mean_old> averaged over the elements, eps the sampled step's noise.
    eps = (old.prev_sample - old.mean) / old.std
    torch.testing.assert_close(got, (eps * (new.mean - old.mean)).mean(dim=(1, 2, 3)), rtol=1e-3, atol=1e-5)
    # The plain log-ratio is that over s, minus the KL |d|^2 / (2 s^2): biased below 0 (eps has mean 0).
    s = new.std.flatten()
    drift = new.mean - old.mean
    plain = new.log_prob - old.log_prob
    torch.testing.assert_close(plain, (eps * drift).mean(dim=(1, 2, 3)) / s - (drift**2).mean(dim=(1, 2, 3)) / (2 * s**2),
                               rtol=1e-3, atol=1e-4)


def test_the_sampler_keeps_each_steps_mean_for_the_guard():
    policy = DiffusionPolicy(**tiny_components("flow"), num_steps=3, guidance_scale=1.0, lora_rank=2)
    policy.record_means = True
    traj = policy.sample(["a 3", "a 7"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for j in range(3):
            step = policy.transition(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
            assert torch.equal(step.mean, traj.means[:, j])


def test_grpo_guard_through_the_cli(tiny_flow_model_dir, tmp_path):
    from tests.test_end_to_end import FAMILY_RUN, finite_and_documented, run_rlft

    run_dir = tmp_path / "run"
    run_rlft("model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=grpo", *FAMILY_RUN,
             "algorithm.group_size=4", "algorithm.guard=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    scalars = finite_and_documented(run_dir)
    # At the first update the weights are the sampling ones: the stored means recompute exactly, ratio 1.
    assert [v for _, v in scalars["train/approx_kl_first_update"]][0] == 0
