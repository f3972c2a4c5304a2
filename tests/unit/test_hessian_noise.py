"""The Hessian-corrected noise scale (largebatch.study.hessian_noise) against closed forms."""

import math

import pytest
import torch
from torch import nn

from largebatch.study.hessian_noise import hessian_noise_scale


class _Quadratic(nn.Module):
    """Per-example loss 0.5 (w - c)^T A (w - c) for examples c ~ N(mu, C): the gradient is
    A (w - c), the Hessian A, so G = A (w - mu), Sigma = A C A, and both noise scales are closed forms."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, c):
        return self.w - c


def test_quadratic_loss_gives_both_closed_forms():
    a = torch.tensor([1.0, 10.0], dtype=torch.float64)
    var = torch.tensor([4.0, 0.25], dtype=torch.float64)
    mu = torch.tensor([0.0, 0.0], dtype=torch.float64)
    model = _Quadratic([1.0, 0.1])
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield mu + var.sqrt() * torch.randn(8, 2, generator=gen, dtype=torch.float64), None

    loss = lambda out, _: 0.5 * (out * out * a).sum(1).mean()  # noqa: E731
    r = hessian_noise_scale(model, batches(), small_batches=4000, loss_fn=loss)
    delta = model.w.detach() - mu
    b_simple = float((a * a * var).sum() / ((a * delta) ** 2).sum())  # tr(A C A) / |A d|^2 = 29 / 2
    b_noise = float((a**3 * var).sum() / (a**3 * delta**2).sum())  # tr(A A C A) / d^T A^3 d = 254 / 11
    assert r.small_batch == 8 and r.small_batches == 4000
    assert r.b_simple == pytest.approx(b_simple, rel=0.1)
    assert r.b_noise == pytest.approx(b_noise, rel=0.1)
    assert r.ratio == pytest.approx(b_noise / b_simple, rel=0.1) and r.ratio > 1.4
    # with A a multiple of the identity the correction vanishes (eq. 2.8 is then exact)
    iso = lambda out, _: 0.5 * 3.0 * (out * out).sum(1).mean()  # noqa: E731
    same = hessian_noise_scale(model, batches(), small_batches=4000, loss_fn=iso)
    assert same.ratio == pytest.approx(1.0, rel=0.02)


def test_a_cnn_with_bn_is_measured_and_left_as_it_was():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(1)

    def batches():
        while True:
            y = torch.randint(0, 3, (16,), generator=gen)
            yield torch.randn(16, 1, 8, 8, generator=gen) + y.view(-1, 1, 1, 1).float(), y

    r = hessian_noise_scale(model, batches(), small_batches=16, hessian_small_batches=2, gradient_hvps=2)
    assert r.small_batch == 16 and r.hessian_batches == 18
    assert r.trace > 0 and r.trace_h != 0 and math.isfinite(r.g_sq)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="ran out"):
        hessian_noise_scale(model, iter([next(batches())] * 3), small_batches=16)
    with pytest.raises(ValueError, match=">= 2"):
        hessian_noise_scale(model, batches(), small_batches=1)
