import pytest
import torch

from rlft.ensemble.aggregation import LCB, UCB, Max, Mean, Min, Softmax, Thompson

R = torch.tensor([[0.1, 0.9, 0.4, -0.2], [2.0, 1.0, 3.0, 0.0]])


def test_max_mean_min():
    torch.testing.assert_close(Max()(R), torch.tensor([0.9, 3.0]))
    torch.testing.assert_close(Mean()(R), R.mean(1))
    torch.testing.assert_close(Min()(R), torch.tensor([-0.2, 0.0]))


def test_softmax_limits_are_max_and_mean():
    torch.testing.assert_close(Softmax(1e-4)(R), Max()(R))
    torch.testing.assert_close(Softmax(1e6)(R), Mean()(R), rtol=1e-5, atol=1e-5)
    between = Softmax(0.5)(R)
    assert (between < Max()(R)).all() and (between > Mean()(R)).all()


def test_ucb_is_mean_plus_kappa_std():
    torch.testing.assert_close(UCB(2.0)(R), R.mean(1) + 2.0 * R.std(1, unbiased=False))
    torch.testing.assert_close(UCB(0.0)(R), Mean()(R))


def test_lcb_is_mean_minus_kappa_std():
    # Row 0: mean 0.3, population std sqrt(0.165); row 1: mean 1.5, std sqrt(1.25).
    expected = torch.tensor([0.3 - 2.0 * 0.165 ** 0.5, 1.5 - 2.0 * 1.25 ** 0.5])
    torch.testing.assert_close(LCB(2.0)(R), expected)
    torch.testing.assert_close(LCB(0.0)(R), Mean()(R))
    assert (LCB(1.0)(R) < Mean()(R)).all()


def test_thompson_draws_every_head():
    torch.manual_seed(0)
    heads = torch.arange(4.0).expand(5000, 4)  # head k always outputs k
    drawn = Thompson()(heads)
    counts = torch.bincount(drawn.long(), minlength=4)
    assert (counts > 1000).all(), counts  # each head about 1250 times


@pytest.mark.parametrize("aggregate", [Max(), Mean(), Min(), Softmax(0.5), UCB(1.0), LCB(1.0), Thompson()])
def test_gradient_reaches_the_heads(aggregate):
    r = R.clone().requires_grad_()
    aggregate(r).sum().backward()
    assert r.grad is not None and r.grad.abs().sum() > 0


@pytest.mark.parametrize("make,match", [(lambda: Softmax(0), "temperature=0"), (lambda: Softmax(-1), "temperature"),
                                        (lambda: UCB(-1), "kappa=-1.*aggregation=lcb"),
                                        (lambda: LCB(-1), "kappa=-1.*aggregation=ucb")])
def test_invalid_parameters_fail_with_the_valid_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()
