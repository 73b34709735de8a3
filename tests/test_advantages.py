import pytest
import torch

from rlft.algorithms.advantages import PerPromptStatTracker, batch_normalized


def test_batch_statistics_until_min_count():
    tracker = PerPromptStatTracker(buffer_size=8, min_count=4)
    rewards = torch.tensor([1.0, 2.0, 3.0, 10.0])
    adv = tracker.update(["a", "a", "b", "b"], rewards)
    torch.testing.assert_close(adv, (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6))


def test_per_prompt_statistics_after_min_count():
    tracker = PerPromptStatTracker(buffer_size=8, min_count=2)
    adv = tracker.update(["a", "a", "b", "b"], torch.tensor([1.0, 3.0, 100.0, 102.0]))
    # each prompt normalised by its own mean and std: both pairs become (-1, +1)
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -1.0, 1.0]), atol=1e-5, rtol=0)


def test_buffer_keeps_only_the_last_rewards():
    tracker = PerPromptStatTracker(buffer_size=2, min_count=2)
    tracker.update(["a", "a"], torch.tensor([100.0, -100.0]))
    adv = tracker.update(["a", "a"], torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)


def test_state_dict_round_trip():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=2)
    tracker.update(["a", "b", "a"], torch.tensor([1.0, 2.0, 3.0]))
    restored = PerPromptStatTracker()
    restored.load_state_dict(tracker.state_dict())
    batch = (["a", "b", "b"], torch.tensor([5.0, 1.0, 7.0]))
    torch.testing.assert_close(restored.update(*batch), tracker.update(*batch))


def test_min_count_above_buffer_is_rejected():
    with pytest.raises(ValueError, match="min_count"):
        PerPromptStatTracker(buffer_size=4, min_count=8)


def test_batch_normalized_has_zero_mean_unit_std():
    adv = batch_normalized(torch.tensor([1.0, 2.0, 6.0, 7.0]))
    assert abs(adv.mean()) < 1e-6 and abs(adv.std(unbiased=False) - 1) < 1e-4
