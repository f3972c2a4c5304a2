"""The two-batch-size estimator of the gradient noise scale (McCandlish et al. 2018, app. A.1) on
synthetic gradients with a known covariance: B_simple = tr(Sigma) / |G|^2 is recovered."""

import pytest
import torch

from largebatch.train.noise_scale import NoiseScaleEstimator, two_batch_estimates


def test_two_batch_estimates_are_the_closed_form_for_exact_expectations():
    # E|g_B|^2 = |G|^2 + tr(Sigma)/B: with these exact expectations the estimates are exact.
    g_sq, trace = 2.0, 300.0
    small, big = g_sq + trace / 8, g_sq + trace / 64
    assert two_batch_estimates(small, big, 8, 64) == pytest.approx((g_sq, trace))
    with pytest.raises(ValueError, match="b_small < b_big"):
        two_batch_estimates(small, big, 64, 64)


@pytest.mark.parametrize("workers,per_worker", [(2, 16), (4, 32), (8, 8)])
def test_smoothed_estimator_recovers_the_noise_scale_within_10_percent(workers, per_worker):
    """Worker gradients G + N(0, Sigma / b) with tr(Sigma) = 100 and |G|^2 = 1 (B_simple = 100, far
    above the batches used); the big batch is their mean, as after an all-reduce."""
    g = torch.Generator().manual_seed(workers)
    n = 64
    G = torch.randn(n, generator=g)
    G /= G.norm()
    variances = torch.rand(n, generator=g) * 2
    variances *= 100 / variances.sum()
    est = NoiseScaleEstimator(decay=0.999)
    for _ in range(4000):
        grads = G + torch.randn(workers, n, generator=g) * (variances / per_worker).sqrt()
        est.update(grads[0].square().sum(), grads.mean(0).square().sum(), per_worker, workers * per_worker)
    b_simple, g_sq, trace = est.values()
    assert b_simple == pytest.approx(100, rel=0.10)
    assert g_sq == pytest.approx(1, rel=0.10) and trace == pytest.approx(100, rel=0.10)


def test_non_finite_steps_leave_the_averages_alone():
    est = NoiseScaleEstimator(decay=0.5)
    est.update(torch.tensor(3.0), torch.tensor(2.0), 1, 2)
    before = est.values()
    est.update(torch.tensor(float("nan")), torch.tensor(2.0), 1, 2)
    assert est.values() == before and NoiseScaleEstimator().values()[0] != NoiseScaleEstimator().values()[0]


def test_micro_batch_norms_recover_the_closed_form_noise_scale_on_one_process():
    """Least squares 1/2 (w.x - y)^2, x ~ N(0, I_n), y = w*.x + e, e ~ N(0, s^2), at a fixed w with
    |w - w*|^2 = 1: B_simple = n (1 + s^2) + 1 (the closed form of tests/distributed/
    test_noise_scale_dist.py). One process accumulates 8 micro-batches of 4 per step, as the trainer
    does (each loss divided by the number of micro-batches); the small batch is a micro-batch."""
    from largebatch.train.noise_scale import MicroBatchNorms

    n, s2, accum, micro = 10, 1.0, 8, 4
    torch.manual_seed(0)
    model = torch.nn.Linear(n, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(n**-0.5)
    norms, est = MicroBatchNorms(), NoiseScaleEstimator(decay=0.999)
    g = torch.Generator().manual_seed(3)
    for _ in range(1500):
        for i in range(accum):
            x = torch.randn(micro, n, generator=g)
            y = s2**0.5 * torch.randn(micro, 1, generator=g)
            (0.5 * (model(x) - y).square().mean() / accum).backward()
            if i < accum - 1:
                norms.after_micro_batch(model.parameters(), accum)
        small_sq, big_sq = norms.finish(model.parameters())
        assert torch.allclose(big_sq, model.weight.grad.square().sum())
        est.update(small_sq, big_sq, micro, micro * accum)
        model.weight.grad = None
    assert est.values()[0] == pytest.approx(n * (1 + s2) + 1, rel=0.10)
    assert norms.finish(model.parameters()) is None  # reset after each step


def test_micro_batch_norms_are_each_micro_batch_gradient():
    """The difference of accumulated gradients times the number of micro-batches is the micro-batch's
    own gradient: compared with separate backward passes."""
    from largebatch.train.noise_scale import MicroBatchNorms

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    xs, ys = torch.randn(3, 4, 6), torch.randint(0, 3, (3, 4))
    own = []
    for x, y in zip(xs, ys):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        own.append(sum(p.grad.square().sum() for p in model.parameters()))
    model.zero_grad(set_to_none=True)
    norms = MicroBatchNorms()
    for i, (x, y) in enumerate(zip(xs, ys)):
        (torch.nn.functional.cross_entropy(model(x), y) / 3).backward()
        if i < 2:
            norms.after_micro_batch(model.parameters(), 3)
    small, big = norms.finish(model.parameters())
    assert small.item() == pytest.approx(((own[0] + own[1]) / 2).item(), rel=1e-5)
    assert big.item() == pytest.approx(sum(p.grad.square().sum() for p in model.parameters()).item(), rel=1e-6)
