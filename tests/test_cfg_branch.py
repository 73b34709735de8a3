"""With `policy.cfg_gradient=conditional`, classifier-free guidance's unconditional branch carries no
gradient: it runs in a call of its own without gradient (no activations kept, no backward over it),
and the prediction and the LoRA's gradients equal those of the batched call with the branch detached
(flow_grpo's form, what rlft computed before), up to the rounding of a batch of B against one of 2B."""

import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.models.digits import load_digits_model


def policy_of(path, cfg_gradient):
    torch.manual_seed(0)
    return DiffusionPolicy(**load_digits_model(str(path)), num_steps=3, guidance_scale=3.0, cfg_gradient=cfg_gradient)


def batched_and_detached(policy, latents, t, embeds):
    out_uncond, out_cond = policy.denoiser_outputs(latents, t, embeds).chunk(2)
    return policy.model.combine_guidance(out_uncond.detach(), out_cond, policy.guidance_scale)


def test_the_unconditional_branch_runs_without_gradient_and_gives_the_same_numbers(tiny_model_dir):
    policy = policy_of(tiny_model_dir, "conditional")
    latents = torch.randn(4, *policy.latent_shape(1)[1:], generator=torch.Generator().manual_seed(1))
    t = policy.sampler.timesteps[1]
    embeds = policy.encode_prompts(["a handwritten 1", "a handwritten 2", "a handwritten 3", "a handwritten 4"])
    weights = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    lora = [p for p in policy.denoiser.parameters() if p.requires_grad]

    calls = []
    hook = policy.denoiser.register_forward_pre_hook(lambda m, args, kwargs: calls.append(
        (len((args or [kwargs.get("sample")])[0]), torch.is_grad_enabled())), with_kwargs=True)
    ours = policy.predict(latents, t, embeds)
    hook.remove()
    assert calls == [(4, False), (4, True)]  # the unconditional branch alone, without gradient; then the conditional
    grads = torch.autograd.grad((ours * weights).sum(), lora)

    before = batched_and_detached(policy, latents, t, embeds)
    expected = torch.autograd.grad((before * weights).sum(), lora)
    torch.testing.assert_close(ours, before, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("cfg_gradient, evaluations", [("both", 4 * 2 * 3), ("conditional", 4 * (2 + 2))])
def test_the_work_counts_one_backward_branch(tiny_model_dir, cfg_gradient, evaluations):
    """A training forward of 4 samples: both branches forward (2 each) and the backward of both (4 each)
    or of the conditional one only (2 more per sample)."""
    policy = policy_of(tiny_model_dir, cfg_gradient)
    latents = torch.randn(4, *policy.latent_shape(1)[1:])
    embeds = policy.encode_prompts(["a handwritten 1"] * 4)
    before = policy.unet_evaluations
    policy.predict(latents, policy.sampler.timesteps[0], embeds)
    assert policy.unet_evaluations - before == evaluations
    with torch.no_grad():  # sampling: both branches in one call, as before
        before = policy.unet_evaluations
        policy.predict(latents, policy.sampler.timesteps[0], embeds)
        assert policy.unet_evaluations - before == 4 * 2

