"""McCandlish et al. 2018 eq. 2.11 fitted to steps to target: closed forms and error bars."""

import math
import random

import pytest

from largebatch.study.scaling import fit_steps_to_target, perfect_scaling_region


def test_exact_points_give_back_the_model():
    s_min, b_noise = 120.0, 1500.0
    batches = [128, 256, 512, 1024, 2048, 4096, 8192]
    steps = [s_min * (1 + b_noise / b) for b in batches]
    fit = fit_steps_to_target(batches, steps)
    assert fit.s_min == pytest.approx(s_min, rel=1e-9)
    assert fit.b_noise == pytest.approx(b_noise, rel=1e-9)
    assert fit.e_min == pytest.approx(s_min * b_noise, rel=1e-9)
    assert fit.s_min_se == pytest.approx(0.0, abs=1e-6) and fit.rms_relative_residual < 1e-12
    assert fit.steps(1500.0) == pytest.approx(2 * s_min)  # at B = B_noise: twice the fewest steps


def test_noisy_points_the_error_bar_covers_the_truth():
    rng = random.Random(0)
    s_min, b_noise = 200.0, 600.0
    batches = [64, 128, 256, 512, 1024, 2048, 4096, 8192]
    covered = 0
    for _ in range(200):
        steps = [s_min * (1 + b_noise / b) * math.exp(rng.gauss(0, 0.05)) for b in batches]
        fit = fit_steps_to_target(batches, steps)
        covered += abs(fit.b_noise - b_noise) <= 2 * fit.b_noise_se
    assert covered >= 170  # about 95% of 2-sigma intervals hold the true critical batch


def test_points_that_do_not_bend_and_bad_input_are_refused():
    batches = [128, 256, 512]
    with pytest.raises(ValueError, match="do not bend"):
        fit_steps_to_target(batches, [10000.0 * 128 / b * 0.9**i for i, b in enumerate(batches)])
    with pytest.raises(ValueError, match="distinct"):
        fit_steps_to_target([256, 256], [10.0, 12.0])
    with pytest.raises(ValueError, match="positive"):
        fit_steps_to_target([256, 512], [10.0, 0.0])
    with pytest.raises(ValueError, match="batch sizes but"):
        fit_steps_to_target([256, 512], [10.0])


def test_perfect_scaling_region_is_the_longest_halving_run():
    batches = [128, 256, 512, 1024, 2048, 4096]
    steps = [4000, 2000, 1050, 560, 400, 380]  # halves (within 20%) up to 1024, then bends
    assert perfect_scaling_region(batches, steps) == [128, 256, 512, 1024]
    assert perfect_scaling_region(batches, [100] * 6) == []
    assert perfect_scaling_region([128, 512], [400, 100]) == []  # not a doubling
