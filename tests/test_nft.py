"""DiffusionNFT as its public code runs it (NVlabs/DiffusionNFT `scripts/train_nft_sd3.py`):
the whole loss against the public formulas written out here, the old policy's decay ramp
against `return_decay`, its soft update and the evaluation EMA against their update rules."""

import copy

import pytest
import torch

from rlft.algorithms.evaluation_ema import ema_weights, evaluation_ema
from rlft.algorithms.nft import nft_loss, optimality_probability
from rlft.algorithms.old_policy import DECAY_TYPES, decay_schedule, old_policy_decay
from rlft.diffusion.policy import DiffusionPolicy
from rlft.diffusion.reference import snapshot
from rlft.tools.tensorboard import read_scalars
from tests.conftest import tiny_components
from tests.test_end_to_end import FAMILY_RUN, run_rlft


def public_loss(forward, old, ref, xt, x0, t, advantages, adv_clip_max, beta, train_beta):
    """The public training step's loss block, its formulas in its order (train_nft_sd3.py)."""
    dims = tuple(range(1, x0.ndim))
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    advantages_clip = torch.clamp(advantages, -adv_clip_max, adv_clip_max)
    r = torch.clamp((advantages_clip / adv_clip_max) / 2.0 + 0.5, 0, 1)
    positive_prediction = beta * forward + (1 - beta) * old.detach()
    implicit_negative_prediction = (1.0 + beta) * old.detach() - beta * forward
    x0_prediction = xt - t * positive_prediction
    with torch.no_grad():
        weight_factor = torch.abs(x0_prediction.double() - x0.double()).mean(dim=dims, keepdim=True).clip(min=0.00001)
    positive_loss = ((x0_prediction - x0) ** 2 / weight_factor).mean(dim=dims)
    negative_x0_prediction = xt - t * implicit_negative_prediction
    with torch.no_grad():
        negative_weight_factor = torch.abs(negative_x0_prediction.double() - x0.double()).mean(dim=dims, keepdim=True).clip(min=0.00001)
    negative_loss = ((negative_x0_prediction - x0) ** 2 / negative_weight_factor).mean(dim=dims)
    ori_policy_loss = r * positive_loss / beta + (1.0 - r) * negative_loss / beta
    policy_loss = (ori_policy_loss * adv_clip_max).mean()
    kl_div_loss = ((forward - ref) ** 2).mean(dim=dims)
    return policy_loss + train_beta * torch.mean(kl_div_loss)


@pytest.mark.parametrize("beta,train_beta,adv_clip_max", [(1.0, 1e-4, 5.0), (0.1, 0.5, 2.0)])
def test_the_whole_loss_equals_the_public_code_kl_and_scale_included(beta, train_beta, adv_clip_max):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    t = torch.tensor([1.0, 0.7, 0.4, 0.1])
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    forward = torch.randn(4, 2, 4, 4, generator=g, requires_grad=True)
    old, ref = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    advantages = torch.tensor([-7.0, -1.0, 0.5, 9.0])  # two beyond the clip
    mine = forward.detach().clone().requires_grad_()
    # rlft clips advantages when it computes them (OnlineRL.advantages); the loss sees them clipped.
    r = optimality_probability(advantages.clamp(-adv_clip_max, adv_clip_max), adv_clip_max)
    loss, stats = nft_loss(mine, old, xt, x0, t, r, beta, adaptive_weight=True, scale=adv_clip_max, v_ref=ref,
                           kl_weight=train_beta)
    want = public_loss(forward, old, ref, xt, x0, t, advantages, adv_clip_max, beta, train_beta)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    loss.backward()
    want.backward()
    torch.testing.assert_close(mine.grad, forward.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(stats["kl"], ((forward - ref) ** 2).mean().detach())


def public_return_decay(step, decay_type):
    """train_nft_sd3.py's return_decay, written out."""
    flat, uprate, uphold = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[decay_type]
    if step < flat:
        return 0.0
    return min((step - flat) * uprate, uphold)


@pytest.mark.parametrize("decay_type", [0, 1, 2])
def test_the_decay_ramp_is_the_public_return_decay(decay_type):
    schedule = decay_schedule(decay_type, None)
    assert [old_policy_decay(step, *schedule) for step in range(1200)] == \
        [public_return_decay(step, decay_type) for step in range(1200)]
    assert schedule == DECAY_TYPES[decay_type]
    assert old_policy_decay(80, *decay_schedule(None, [75, 0.0075, 0.999])) == public_return_decay(80, 2)


@pytest.mark.parametrize("decay_type,decay,match", [
    (1, [0, 0.01, 0.5], "give exactly one"), (None, None, "give exactly one"), (3, None, "not a public schedule"),
    (None, [0, 0.01, 1.0], "maximum in \\[0, 1\\)"), (None, [-1, 0.01, 0.5], "flat_steps >= 0"),
])
def test_a_decay_schedule_out_of_range_is_refused(decay_type, decay, match):
    with pytest.raises(ValueError, match=match):
        decay_schedule(decay_type, decay)


def tiny_policy(**options) -> DiffusionPolicy:
    return DiffusionPolicy(**tiny_components("flow"), num_steps=3, guidance_scale=1.0, **options)


@pytest.mark.parametrize("lora_rank", [2, None])
def test_the_soft_update_and_the_old_weights_in_use(lora_rank):
    """old <- decay * old + (1 - decay) * theta, bit for bit; inside `active` the policy predicts
    with the old weights (LoRA: the second adapter; full fine-tuning: the copy swapped in)."""
    torch.manual_seed(0)
    policy = tiny_policy(lora_rank=lora_rank)
    old = snapshot(policy)
    before = [p.detach().clone() for p in policy.trainable_parameters()]
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, t, embeds = torch.randn(2, 1, 8, 8), policy.sampler.timesteps[1], policy.encode_prompts(["a 3", "a 7"])
    with torch.no_grad():
        via_predict = old.predict(policy, x, t, embeds)
        with old.active(policy):
            via_active = policy.predict(x, t, embeds)
        now = policy.predict(x, t, embeds)
    torch.testing.assert_close(via_active, via_predict)
    assert not torch.allclose(now, via_predict)
    theta = [p.detach().clone() for p in policy.trainable_parameters()]
    old.soft_update(policy, 0.3)
    if lora_rank:
        got = [theirs for _, theirs in old.pairs()]
    else:
        got = list(old.weights.values())
    assert len(got) == len(before)
    for g, b, th in zip(got, before, theta):
        assert torch.equal(g, b * 0.3 + th * (1.0 - 0.3))
    assert all(torch.equal(p, th) for p, th in zip(policy.trainable_parameters(), theta))  # theta untouched


def test_the_evaluation_ema_follows_the_public_schedule_and_is_swapped_in_and_out():
    """EMAModuleWrapper: at the k-th optimizer step (k = 1, 2, ...), decay_k = min((1 + k) / (10 + k), 0.9)
    and ema += (1 - decay_k) * (theta - ema)."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    ema = evaluation_ema(params, 0.9)
    want = [p.detach().clone() for p in params]
    for k in range(1, 30):
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn_like(p))
        ema.step(params)
        decay = min((1 + k) / (10 + k), 0.9)
        want = [w + (1 - decay) * (p.detach() - w) for w, p in zip(want, params)]
    for s, w in zip(ema.shadow_params, want):
        torch.testing.assert_close(s, w, rtol=1e-6, atol=1e-6)
    trained = copy.deepcopy([p.detach() for p in params])
    with ema_weights(ema, params):
        assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow_params))
    assert all(torch.equal(p, t) for p, t in zip(params, trained))


def old_and_trained(run_dir):
    """The checkpoint's old-adapter matrices and the trained ones, in the same (layer) order."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    trained = {k: v for k, v in checkpoint["state_dict"].items() if ".default." in k}
    old = checkpoint["rlft"]["nft"]["old"]["weights"]
    assert [t.shape for t in trained.values()] == [o.shape for o in old] and trained
    return old, trained, checkpoint["rlft"]["optimizer_steps"]


def test_a_run_soft_updates_its_old_adapter_as_written_by_hand(tiny_flow_model_dir, tmp_path):
    """Epoch 1 and 2 of one run (stopped after each): after each epoch's update,
    old = decay * old_before + (1 - decay) * theta, bit for bit, the decay that of the steps taken."""
    run_dir = tmp_path / "run"
    common = ["model=digits_flow", f"model.pretrained={tiny_flow_model_dir}", "algorithm=nft", *FAMILY_RUN[1:],
              "algorithm.group_size=4", "algorithm.decay_type=null", "algorithm.decay=[1,0.1,0.9]",
              f"hydra.run.dir={run_dir}"]
    run_rlft(*common, "trainer.max_epochs=1", cwd=tmp_path)
    old_1, theta_1, steps_1 = old_and_trained(run_dir)
    assert steps_1 == 2
    # The old adapter started equal to theta_0, whose lora_B is 0: after 2 steps (decay 0.1) old_1's
    # B is 0.9 theta_1's.
    b_matrices = [(o, t) for o, (k, t) in zip(old_1, theta_1.items()) if ".lora_B." in k]
    assert b_matrices and all(torch.equal(o, t * (1.0 - 0.1)) and t.abs().sum() > 0 for o, t in b_matrices)
    run_rlft(*common, "trainer.max_epochs=2", cwd=tmp_path)
    old_2, theta_2, steps_2 = old_and_trained(run_dir)
    assert steps_2 == 4
    decay = 0.3  # (4 steps - 1 flat) * 0.1
    for before, theta, after in zip(old_1, theta_2.values(), old_2):
        assert torch.equal(after, before * decay + theta * (1.0 - decay))
    scalars = read_scalars(run_dir)
    assert [round(v, 6) for _, v in scalars["train/old_decay"]] == [0.1, 0.3]
    assert "rollout/log_prob_mean" not in scalars  # the public sampler: deterministic, no log-probability
