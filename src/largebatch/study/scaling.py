"""The steps-to-target model of McCandlish et al. 2018 ("An empirical model of large-batch
training", eq. 2.11), fitted to measured steps.

At global batch B, the optimizer steps to reach a fixed target follow
``S(B) = S_min (1 + B_noise / B)`` and the training examples ``E(B) = S(B) B = E_min (1 + B / B_noise)``
with ``E_min = S_min B_noise``. ``B_noise`` is the critical batch size: below it doubling the batch
halves the steps (perfect scaling), above it the steps approach ``S_min`` and doubling buys little.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class StepsFit:
    """The fitted model and its standard errors (from the weighted least-squares covariance)."""

    s_min: float
    """Fewest steps at an infinite batch (steps)."""
    s_min_se: float
    b_noise: float
    """Critical batch size B_noise = E_min / S_min (images)."""
    b_noise_se: float
    e_min: float
    """Fewest training images at a vanishing batch (images)."""
    e_min_se: float
    points: int
    rms_relative_residual: float

    def steps(self, batch: float) -> float:
        """S(B) of the fit, in steps."""
        return self.s_min * (1.0 + self.b_noise / batch)

    def as_dict(self) -> dict:
        return asdict(self)


def fit_steps_to_target(batch_sizes: list[float], steps: list[float]) -> StepsFit:
    """Fit ``S = S_min + E_min / B`` (eq. 2.11 of McCandlish et al. 2018, linear in 1/B) to measured
    steps to target, each point weighted by 1/S^2 so that every batch counts by its relative error
    (steps span orders of magnitude). Standard errors come from the residual variance times the
    inverse normal matrix; that of B_noise = E_min / S_min by the delta method (with the
    covariance of the two coefficients).

    Args:
        batch_sizes: global batch sizes, images (at least 2 distinct; 3 or more for errors).
        steps: steps to target at each batch, > 0.

    Raises:
        ValueError: for fewer than 2 points, unequal lengths, non-positive values, or a fit whose
            S_min is not positive (the points do not bend: all below the critical batch).
    """
    if len(batch_sizes) != len(steps):
        raise ValueError(f"{len(batch_sizes)} batch sizes but {len(steps)} step counts")
    if len(set(batch_sizes)) < 2:
        raise ValueError("the fit needs steps at 2 or more distinct batch sizes")
    if any(b <= 0 for b in batch_sizes) or any(s <= 0 for s in steps):
        raise ValueError("batch sizes and steps must be positive")
    # weighted normal equations for y = a + b x, x = 1/B, weight w = 1/y^2
    sw = sx = sy = sxx = sxy = 0.0
    for bsz, s in zip(batch_sizes, steps):
        w, x = 1.0 / (s * s), 1.0 / bsz
        sw, sx, sy, sxx, sxy = sw + w, sx + w * x, sy + w * s, sxx + w * x * x, sxy + w * x * s
    det = sw * sxx - sx * sx
    a = (sxx * sy - sx * sxy) / det
    b = (sw * sxy - sx * sy) / det
    if a <= 0:
        raise ValueError(
            f"the fit gives S_min = {a:.3g} <= 0: the points do not bend (every batch is below the "
            "critical batch); measure larger batches"
        )
    n = len(steps)
    rss = sum((s - a - b / bsz) ** 2 / (s * s) for bsz, s in zip(batch_sizes, steps))
    sigma2 = rss / (n - 2) if n > 2 else 0.0
    var_a, var_b, cov_ab = sigma2 * sxx / det, sigma2 * sw / det, -sigma2 * sx / det
    b_noise = b / a
    var_bn = b_noise**2 * (var_b / b**2 + var_a / a**2 - 2 * cov_ab / (a * b)) if b else 0.0
    return StepsFit(
        s_min=a,
        s_min_se=math.sqrt(max(var_a, 0.0)),
        b_noise=b_noise,
        b_noise_se=math.sqrt(max(var_bn, 0.0)),
        e_min=b,
        e_min_se=math.sqrt(max(var_b, 0.0)),
        points=n,
        rms_relative_residual=math.sqrt(rss / n),
    )


def perfect_scaling_region(batch_sizes: list[int], steps: list[float], tolerance: float = 0.2) -> list[int]:
    """The longest run of consecutive batch sizes (each twice the previous) over which every doubling
    divides the steps by 2 within ``tolerance`` (ratio of consecutive steps in [0.5 (1 - tol),
    0.5 (1 + tol)]); returns those batch sizes (empty when no doubling scales)."""
    pts = sorted(zip(batch_sizes, steps))
    best: list[int] = []
    run = [pts[0][0]] if pts else []
    for (b0, s0), (b1, s1) in zip(pts, pts[1:]):
        ok = b1 == 2 * b0 and 0.5 * (1 - tolerance) <= s1 / s0 <= 0.5 * (1 + tolerance)
        run = run + [b1] if ok else [b1]
        if ok and len(run) > len(best):
            best = list(run)
    return best if len(best) >= 2 else []
