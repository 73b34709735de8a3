import pytest
import torch

from rlft.diffusion.policy import DiffusionPolicy
from rlft.diffusion.reference import BaseReference, snapshot
from rlft.models.digits import load_digits_model
from tests.conftest import tiny_components

PROMPTS = ["a handwritten 3", "the number seven", "a handwritten 0"]


def make_policy(family: str = "ddim", **kwargs) -> DiffusionPolicy:
    return DiffusionPolicy(**tiny_components(family), **{"num_steps": 5, "guidance_scale": 2.0, **kwargs})


FAMILIES = ["ddim", "flow"]


def perturb_lora(policy: DiffusionPolicy) -> None:
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_recomputed_log_prob_equals_stored(reduction, family):
    """Unchanged weights: ratio == 1 at the first PPO update (DESIGN.md)."""
    policy = make_policy(family, reduction=reduction)
    perturb_lora(policy)  # LoRA B starts at 0; make the adapter actually do something
    traj = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (3, 5, 1, 8, 8) and traj.log_probs.shape == (3, 5)
    for j in range(5):
        recomputed = policy.log_prob(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
        torch.testing.assert_close(recomputed, traj.log_probs[:, j], rtol=1e-5, atol=1e-4)
    assert torch.equal(traj.latents[:, 1:], traj.next_latents[:, :-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_changes_when_weights_change_and_has_gradient(family):
    policy = make_policy(family)
    traj = policy.sample(PROMPTS)
    perturb_lora(policy)
    lp = policy.log_prob(traj.latents[:, 2], traj.next_latents[:, 2], traj.timesteps[:, 2], traj.prompt_embeds)
    assert not torch.allclose(lp, traj.log_probs[:, 2])
    lp.sum().backward()
    grads = [p.grad for p in policy.trainable_parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_lora_starts_at_the_base_model_and_trains_only_adapters():
    components = tiny_components()
    base_out = components["denoiser"](torch.ones(1, 1, 8, 8), 10, torch.ones(1, 4, 8)).sample
    policy = DiffusionPolicy(**components, num_steps=5, lora_rank=2)
    torch.testing.assert_close(policy.denoiser(torch.ones(1, 1, 8, 8), 10, torch.ones(1, 4, 8)).sample, base_out)
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert names and all("lora" in n for n in names)
    assert not any(p.requires_grad for p in policy.model.parameters())


def test_full_fine_tuning_trains_the_whole_unet():
    policy = make_policy(lora_rank=None)
    assert len(policy.trainable_parameters()) == len(list(policy.denoiser.parameters()))


def test_images_are_in_unit_range():
    traj = make_policy().sample(PROMPTS)
    assert traj.images.shape == (3, 1, 8, 8)
    assert traj.images.min() >= 0 and traj.images.max() <= 1


def test_unknown_prompt_word_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'dog'.*vocabulary"):
        make_policy().encode_prompts(["a handwritten dog"])


def test_loads_through_from_pretrained(tiny_model_dir):
    components = load_digits_model(str(tiny_model_dir))
    assert components["scheduler"].config.steps_offset == 1
    DiffusionPolicy(**components, num_steps=4).sample(["a handwritten 1"])


def test_missing_model_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_digits_model(str(tmp_path / "nope"))


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_with_grad_reaches_only_through_the_last_steps(family):
    policy = make_policy(family, num_steps=4)
    perturb_lora(policy)
    reference = snapshot(policy)  # a second adapter; the checkpointed backward recomputes with the policy's
    images, kl = policy.sample_with_grad(PROMPTS, grad_steps=2, reference=reference)
    assert images.shape == (3, 1, 8, 8) and images.requires_grad
    torch.testing.assert_close(kl, torch.zeros(3))  # same weights as the reference: KL 0
    images.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.trainable_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_kl_grows_when_the_policy_moves_away_from_its_reference(family):
    policy = make_policy(family, num_steps=4)
    reference = BaseReference()  # LoRA B = 0 so far: the base
    perturb_lora(policy)
    _, kl = policy.sample_with_grad(PROMPTS, grad_steps=4, reference=reference, checkpoint=False)
    assert (kl > 0).all()
    kl.sum().backward()
    assert all(p.grad is not None for p in policy.trainable_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_sde_window_stores_and_trains_only_its_steps(family):
    """Steps outside the window are deterministic ODE steps: not stored, no log-probability.
    The window's transitions still recompute to their stored log-probabilities."""
    policy = make_policy(family, sde_window=[1, 3])
    perturb_lora(policy)
    traj = policy.sample(PROMPTS, generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape == (3, 2, 1, 8, 8) and traj.log_probs.shape == (3, 2)
    assert torch.equal(traj.timesteps[0], policy.sampler.timesteps[1:3].to(traj.timesteps.dtype))
    for j in range(2):
        recomputed = policy.log_prob(traj.latents[:, j], traj.next_latents[:, j], traj.timesteps[:, j], traj.prompt_embeds)
        torch.testing.assert_close(recomputed, traj.log_probs[:, j], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("window", [[0, 0], [3, 2], [0, 6], [-1, 2]])
def test_sde_window_outside_the_schedule_is_a_clear_error(window):
    with pytest.raises(ValueError, match=r"policy.sde_window=.*0 <= start < stop <= policy.num_steps=5"):
        make_policy("flow", sde_window=window)


def test_a_setting_of_the_other_family_is_a_clear_error():
    with pytest.raises(ValueError, match="policy.noise_level=0.5 is a flow-model setting"):
        make_policy("ddim", noise_level=0.5)
    with pytest.raises(ValueError, match="policy.eta=1.0 is a DDIM setting"):
        make_policy("flow", eta=1.0)


def test_flow_policy_loads_through_from_pretrained(tiny_flow_model_dir):
    from diffusers import FlowMatchEulerDiscreteScheduler

    components = load_digits_model(str(tiny_flow_model_dir))
    assert isinstance(components["scheduler"], FlowMatchEulerDiscreteScheduler)
    policy = DiffusionPolicy(**components, num_steps=4)
    assert policy.family == "flow" and policy.sampler.noise_level == 0.7
    assert policy.sample(["a handwritten 1"]).images.shape == (1, 1, 8, 8)


def test_compiled_policy_pads_each_phase_to_one_graph_and_matches_eager():
    """policy.compile: the smaller last chunk (and micro-batch) runs in the graph built for
    the full one, so sampling compiles once and training once; outputs equal eager's."""
    graphs = []

    def counting_backend(gm, example_inputs):  # what torch.compile hands a backend: one per graph built
        graphs.append([tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)])
        return gm.forward

    eager, compiled = make_policy(), make_policy(compile={"backend": counting_backend})
    for policy in (eager, compiled):
        perturb_lora(policy)
    compiled.load_state_dict(eager.state_dict())
    noise = lambda n: [torch.Generator().manual_seed(i) for i in range(n)]
    sample = lambda policy, n: policy.sample([PROMPTS[i % 3] for i in range(n)], generator=noise(n))
    for n in (4, 2, 3):  # a full chunk, then smaller last chunks
        torch.testing.assert_close(sample(compiled, n).log_probs, sample(eager, n).log_probs)
    sampling_graphs = len(graphs)
    assert sampling_graphs >= 1 and compiled.compiled_batches == {False: {4}}

    traj = sample(eager, 4)
    for rows in (slice(0, 4), slice(0, 2), slice(1, 4)):
        lps = [p.log_prob(traj.latents[rows, 1], traj.next_latents[rows, 1], traj.timesteps[rows, 1], traj.prompt_embeds[rows])
               for p in (compiled, eager)]
        torch.testing.assert_close(*lps)
        grads = []
        for p, lp in zip((compiled, eager), lps):
            p.zero_grad()
            lp.sum().backward()
            grads.append([q.grad for q in p.trainable_parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
    assert compiled.compiled_batches == {False: {4}, True: {4}}
    assert len(graphs) == 2 * sampling_graphs  # training built its graphs once, as sampling did
    # A larger batch elsewhere (evaluation) builds its own graph; the others do not pad up to it.
    torch.testing.assert_close(sample(compiled, 6).log_probs, sample(eager, 6).log_probs)
    assert len(graphs) == 3 * sampling_graphs and compiled.compiled_batches[False] == {4, 6}
    sample(compiled, 3), sample(eager, 3)
    assert len(graphs) == 3 * sampling_graphs
    # Padding rows are not counted as work: the two differ by `traj` alone (4 samples, CFG, 5 steps).
    assert eager.unet_evaluations - compiled.unet_evaluations == 4 * 2 * 5


def test_prompts_are_encoded_once_and_the_text_encoders_released(tmp_path):
    policy = make_policy("flow", embedding_cache=str(tmp_path))
    fresh = policy.encode_prompts(["a handwritten 1", "a handwritten 2", "a handwritten 1"])
    encoder_params = sum(p.numel() for p in policy.model.parameters())
    assert encoder_params > 0
    done = policy.cache_prompts(["a handwritten 2", "a handwritten 1", "a handwritten 2"])
    assert (done["prompts"], done["encoded"], done["reused"]) == (2, 2, 0) and done["released"] == ["prompt_encoder"]
    assert sum(p.numel() for p in policy.model.parameters()) == 0  # the encoder's memory is no longer held
    cached = policy.encode_prompts(["a handwritten 1", "a handwritten 2", "a handwritten 1"])
    assert torch.equal(cached.tokens, fresh.tokens)
    with pytest.raises(ValueError, match=r"prompts \['a handwritten 3'\] were not among those this run encoded"):
        policy.encode_prompts(["a handwritten 3"])
    assert policy.sample(["a handwritten 1"]).images.shape == (1, 1, 8, 8)  # sampling runs on the cache


def test_release_text_encoders_false_keeps_them(tmp_path):
    policy = make_policy("ddim", release_text_encoders=False, embedding_cache=str(tmp_path))
    assert policy.cache_prompts(["a handwritten 1"])["released"] == []
    assert policy.encode_prompts(["a handwritten 3"]).tokens.shape[0] == 1  # still encodable
