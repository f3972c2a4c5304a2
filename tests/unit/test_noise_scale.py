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
