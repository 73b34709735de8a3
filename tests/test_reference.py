"""KL references without a copy of the network (rlft.diffusion.reference), checked against
the independent computation they replace: a deep copy of the policy taken at the same time."""

import copy

import pytest
import torch

from rlft.diffusion.reference import AdapterReference, BaseReference, WeightsReference, base_reference, snapshot
from tests.test_policy import PROMPTS, make_policy, perturb_lora

T = 500


def inputs(policy):
    torch.manual_seed(3)
    embeds = policy.encode_prompts(PROMPTS)
    x = torch.randn(len(PROMPTS), 1, 8, 8)
    return x, torch.tensor(T), embeds


@pytest.mark.parametrize("lora_rank", [4, None])
def test_snapshot_predicts_as_the_policy_did_when_taken(lora_rank):
    policy = make_policy(lora_rank=lora_rank)
    perturb_lora(policy)
    then = copy.deepcopy(policy)  # the independent computation, here only
    reference = snapshot(policy)
    assert isinstance(reference, AdapterReference if lora_rank else WeightsReference)
    perturb_lora(policy)  # the policy trains on
    x, t, embeds = inputs(policy)
    with torch.no_grad():
        expected, now = then.predict(x, t, embeds), policy.predict(x, t, embeds)
        assert not torch.allclose(expected, now)
        torch.testing.assert_close(reference.predict(policy, x, t, embeds), expected, rtol=0, atol=1e-6)
        assert torch.equal(policy.predict(x, t, embeds), now)  # the policy's own adapter is back
    trainable = policy.trainable_parameters()
    assert trainable and all("reference" not in n for n, p in policy.named_parameters() if p.requires_grad)


def test_base_reference_is_the_denoiser_without_its_adapter():
    policy = make_policy()
    base = copy.deepcopy(policy)  # LoRA B = 0: the base model
    perturb_lora(policy)
    x, t, embeds = inputs(policy)
    with torch.no_grad():
        assert torch.equal(BaseReference().predict(policy, x, t, embeds), base.predict(x, t, embeds))


@pytest.mark.parametrize("lora_rank", [4, None])
def test_grpos_base_reference_stays_the_untrained_model(lora_rank):
    """GRPO's reference, taken when the module is built: the base, whatever training does after."""
    policy = make_policy(lora_rank=lora_rank)
    base = copy.deepcopy(policy)  # before any training: the base model
    reference = base_reference(policy)
    assert isinstance(reference, BaseReference if lora_rank else WeightsReference)
    perturb_lora(policy) if lora_rank else [p.data.add_(0.05 * torch.randn_like(p)) for p in policy.trainable_parameters()]
    x, t, embeds = inputs(policy)
    with torch.no_grad():
        assert not torch.allclose(policy.predict(x, t, embeds), base.predict(x, t, embeds))
        torch.testing.assert_close(reference.predict(policy, x, t, embeds), base.predict(x, t, embeds), rtol=0, atol=1e-6)


def test_a_reference_forward_between_forward_and_backward_leaves_the_gradient_alone():
    policy = make_policy()
    perturb_lora(policy)
    reference = snapshot(policy)
    x, t, embeds = inputs(policy)

    def gradient(with_reference: bool):
        policy.zero_grad()
        loss = policy.predict(x, t, embeds).square().mean()
        if with_reference:
            with torch.no_grad():
                reference.predict(policy, x, t, embeds)
                BaseReference().predict(policy, x, t, embeds)
        loss.backward()
        return [p.grad.clone() for p in policy.trainable_parameters()]

    for a, b in zip(gradient(False), gradient(True), strict=True):
        assert torch.equal(a, b)


def test_a_snapshot_adds_no_second_network():
    policy = make_policy()
    before = sum(p.numel() for p in policy.parameters())
    lora = sum(p.numel() for p in policy.trainable_parameters())
    snapshot(policy)
    assert sum(p.numel() for p in policy.parameters()) == before + lora  # one more adapter, nothing else
