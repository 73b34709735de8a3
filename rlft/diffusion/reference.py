"""KL reference policies without a copy of the network.

A reference is the frozen base plus other trainable weights than the policy's own: with
LoRA, a second peft adapter on the same denoiser (`ADAPTER`, holding a snapshot of the
policy's LoRA weights), or the base itself with every adapter disabled; the reference's
forward switches adapters and switches back. Under full fine-tuning the trainable weights
are the whole denoiser, so the snapshot is a frozen copy of its parameters (the one copy a
reference needs), used through `torch.func.functional_call`, never a second network.

`reference.predict(policy, latents, t, embeds)` is the guided prediction of the reference;
inside `with reference.active(policy):` every forward of the policy is the reference's
(DiffusionNFT samples with its "old" policy so); `reference.soft_update(policy, decay)` moves
a snapshot towards the policy, `ref <- decay * ref + (1 - decay) * policy`.
"""

from contextlib import contextmanager

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer

from rlft.diffusion.dtensors import gathered, sharded_like

POLICY_ADAPTER = "default"  # the adapter DiffusionPolicy adds and trains (peft's default name)
ADAPTER = "reference"


def lora_layers(denoiser: torch.nn.Module) -> list[BaseTunerLayer]:
    return [m for m in denoiser.modules() if isinstance(m, BaseTunerLayer)]


@contextmanager
def active_adapter(denoiser: torch.nn.Module, name: str | None):
    """Forward passes inside run adapter `name` (None: the base, every adapter disabled). After,
    the policy's adapter is active and trainable again and every other adapter frozen (peft's
    `set_adapter` sets the flags; the gradient graph built before is untouched)."""
    layers = lora_layers(denoiser)
    for layer in layers:
        if name is None:
            layer.enable_adapters(False)
        else:
            layer.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        for layer in layers:
            layer.set_adapter(POLICY_ADAPTER)
            layer.enable_adapters(True)


class BaseReference:
    """The frozen base: the policy with its LoRA adapter disabled (GRPO's reference; SEIKO's
    before its first round)."""

    def active(self, policy):
        return active_adapter(policy.denoiser, None)

    def predict(self, policy, latents, timesteps, embeds):
        with self.active(policy):
            return policy.predict(latents, timesteps, embeds)

    def state_dict(self) -> dict:
        return {"kind": "base"}


class AdapterReference:
    """A snapshot of the policy's LoRA weights in a second, frozen adapter of the same denoiser."""

    def __init__(self, policy):
        denoiser = policy.denoiser
        if ADAPTER not in denoiser.peft_config:
            config = denoiser.peft_config[POLICY_ADAPTER]
            denoiser.add_adapter(LoraConfig(r=config.r, lora_alpha=config.lora_alpha,
                                            target_modules=config.target_modules), adapter_name=ADAPTER)
            for layer in lora_layers(denoiser):  # add_adapter made the new one active and trainable
                layer.set_adapter(POLICY_ADAPTER)
        self.denoiser = denoiser
        self.copy_policy()

    def pairs(self):
        """(policy's weight, reference's weight) for every LoRA matrix."""
        for layer in lora_layers(self.denoiser):
            for name in layer.adapter_layer_names:
                weights = getattr(layer, name)
                if POLICY_ADAPTER in weights:  # lora_A/B of a Linear; its embedding dicts are empty
                    yield from zip(weights[POLICY_ADAPTER].parameters(), weights[ADAPTER].parameters(), strict=True)

    @torch.no_grad()
    def copy_policy(self) -> None:
        for mine, theirs in self.pairs():
            theirs.copy_(mine)
            theirs.requires_grad_(False)

    def active(self, policy):
        return active_adapter(policy.denoiser, ADAPTER)

    def predict(self, policy, latents, timesteps, embeds):
        with self.active(policy):
            return policy.predict(latents, timesteps, embeds)

    @torch.no_grad()
    def soft_update(self, policy, decay: float) -> None:
        """ref <- decay * ref + (1 - decay) * policy, matrix by matrix (decay 0: a copy)."""
        for mine, theirs in self.pairs():
            theirs.copy_(theirs * decay + mine * (1.0 - decay))

    def state_dict(self) -> dict:
        """The adapter's weights whole (gathered under trainer=fsdp2: every process calls it)."""
        return {"kind": "adapter", "weights": [gathered(theirs.detach()).clone() for _, theirs in self.pairs()]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for (_, theirs), saved in zip(self.pairs(), state["weights"], strict=True):
            theirs.copy_(sharded_like(theirs, saved))


class WeightsReference:
    """Full fine-tuning: a frozen copy of the denoiser's parameters, swapped in for a forward."""

    def __init__(self, policy):
        self.weights = {f"denoiser.{name}": p.detach().clone() for name, p in policy.denoiser.named_parameters()}

    def predict(self, policy, latents, timesteps, embeds):
        return torch.func.functional_call(policy, self.weights, (latents, timesteps, embeds), strict=False)

    @contextmanager
    def active(self, policy):
        """The copy's tensors swapped into the denoiser's parameters (no copy made), and back."""
        params = dict(policy.denoiser.named_parameters())

        def swap():
            for name, theirs in list(self.weights.items()):
                param = params[name.removeprefix("denoiser.")]
                param.data, self.weights[name] = theirs, param.data

        swap()
        try:
            yield
        finally:
            swap()

    @torch.no_grad()
    def soft_update(self, policy, decay: float) -> None:
        for name, mine in policy.denoiser.named_parameters():
            theirs = self.weights[f"denoiser.{name}"]
            theirs.copy_(theirs * decay + mine * (1.0 - decay))

    def state_dict(self) -> dict:
        return {"kind": "weights", "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = state["weights"]


def snapshot(policy):
    """A reference equal to the policy now."""
    return AdapterReference(policy) if lora_layers(policy.denoiser) else WeightsReference(policy)


def reference_from_state(policy, state: dict | None):
    if state is None:
        return None
    if state["kind"] == "base":
        return BaseReference()
    reference = snapshot(policy)
    reference.load_state_dict(state)
    return reference


def base_reference(policy):
    """The frozen base as a reference, taken before any training: with LoRA the policy with
    its adapter disabled (no copy); under full fine-tuning a snapshot of the untrained weights."""
    return BaseReference() if lora_layers(policy.denoiser) else WeightsReference(policy)
