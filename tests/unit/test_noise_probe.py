"""From per-step noise-scale estimates to the run's critical batch (largebatch.study.noise_probe)."""

import functools
import math
import random

import pytest

from largebatch.study.noise_probe import (
    CALIBRATION,
    CALIBRATION_SPREAD,
    fit_trend,
    predict,
    run_level,
    step_estimates,
    window_estimates,
)


def _estimates(b_of_step, steps, noise, seed):
    """Per-step unbiased estimates (|G|^2, tr Sigma) whose ratio of sums is b_of_step: |G|^2 = 1 +
    noise, tr(Sigma) = b (1 + noise)."""
    rng = random.Random(seed)
    return [(t, 1.0 + rng.gauss(0, noise), b_of_step(t) * (1.0 + rng.gauss(0, noise))) for t in steps]


def test_step_estimates_number_the_steps_of_each_record():
    records = [
        {"kind": "train", "step": 3, "noise_scale_steps": [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]},
        {"kind": "eval", "step": 3},
        {"kind": "train", "step": 5, "noise_scale_steps": [[4.0, float("nan")], [5.0, 50.0]]},
    ]
    assert step_estimates(records) == [(1, 1.0, 10.0), (2, 2.0, 20.0), (3, 3.0, 30.0), (5, 5.0, 50.0)]


def test_windows_are_ratios_of_sums_and_a_short_tail_joins_the_last():
    est = [(t, 1.0, 100.0 if t < 11 else 300.0) for t in range(1, 23)]
    w = window_estimates(est, window_steps=10, first_step=1, resamples=50)
    assert [(x.first_step, x.last_step) for x in w] == [(1, 10), (11, 22)]  # steps 21-22 joined the window before
    assert w[0].b_simple == pytest.approx(100) and w[1].b_simple == pytest.approx(300)
    neg = window_estimates([(1, -1.0, 5.0), (2, 0.5, 5.0)], window_steps=2, resamples=10)
    assert neg[0].negative and math.isinf(neg[0].b_simple)


def test_trend_and_run_level_closed_forms():
    a, c = fit_trend([(t, 50 * t**0.5) for t in (10, 40, 90)])
    assert c == pytest.approx(0.5) and math.exp(a) == pytest.approx(50)
    assert fit_trend([(10, 5.0)]) is None
    # a constant noise scale averages to itself; a rising one weighs early, cheap-in-S_min steps more
    assert run_level(lambda t: 400.0, 0, 100, 512) == pytest.approx(400)
    rising = run_level(lambda t: 100 + 9 * t, 0, 100, 512)
    assert 100 < rising < 550 and rising < (100 + 1000) / 2 * 1.2


def test_prediction_recovers_a_growing_noise_scale_and_seeds_widen_the_interval():
    b = lambda t: 20 * t**0.6  # noqa: E731
    steps = range(1, 241)
    one = _estimates(b, steps, 0.3, 0)
    uncalibrated = functools.partial(
        predict,
        window_steps=30,
        warmup_steps=30,
        horizon_step=480,
        reference_batch=512,
        calibration=1.0,
        calibration_spread=1.0,
    )
    p = uncalibrated(one)
    assert p.trend_exponent == pytest.approx(0.6, abs=0.1)
    truth = run_level(b, 31, 480, 512)
    assert p.run_level_b == pytest.approx(truth, rel=0.15) and p.predicted_low <= truth <= p.predicted_high
    assert p.horizon_b == pytest.approx(b(480), rel=0.25) and p.negative_windows == 0
    # a second probe whose noise scale reads 1.5x higher: the pooled interval spans both
    other = _estimates(lambda t: 1.5 * b(t), steps, 0.3, 1)
    both = uncalibrated(one + other, seed_groups=[one, other])
    alone = uncalibrated(other)
    assert both.predicted_low <= p.run_level_b * 1.05 and both.predicted_high >= alone.run_level_b * 0.95
    # by default the frozen calibration factor multiplies the prediction and its interval
    calibrated = predict(one, window_steps=30, warmup_steps=30, horizon_step=480, reference_batch=512)
    assert calibrated.calibration == CALIBRATION and calibrated.predicted == pytest.approx(p.run_level_b * CALIBRATION)
    assert calibrated.sampling_low == pytest.approx(p.predicted_low * CALIBRATION)
    assert calibrated.sampling_high == pytest.approx(p.predicted_high * CALIBRATION)
    # ... and the printed interval is that one widened by the factor's own scatter on each side
    assert calibrated.calibration_spread == CALIBRATION_SPREAD
    assert calibrated.predicted_low == pytest.approx(p.predicted_low * CALIBRATION / CALIBRATION_SPREAD)
    assert calibrated.predicted_high == pytest.approx(p.predicted_high * CALIBRATION * CALIBRATION_SPREAD)
    with pytest.raises(ValueError, match="after warmup"):
        predict(one, window_steps=30, warmup_steps=500, horizon_step=600, reference_batch=512)


def test_the_frozen_calibration_is_the_recorded_calibration_configurations_factor_and_scatter():
    """CALIBRATION and CALIBRATION_SPREAD are what the validation report
    (benchmarks/results/critical_batch_validation.json) gives for its two calibration rows: the
    geometric mean of measured / uncalibrated prediction, and the larger ratio of either to it."""
    import json
    from pathlib import Path

    rows = json.loads((Path(__file__).parents[2] / "benchmarks/results/critical_batch_validation.json").read_text())
    calib = [r for r in rows if r["role"] == "calibration"]
    assert len(calib) == 2 and all(r["measured"] and r["predicted"] for r in calib)
    factors = [r["measured"] / (r["predicted"] / r["calibration"]) for r in calib]
    mean = math.sqrt(factors[0] * factors[1])
    assert mean == pytest.approx(CALIBRATION, abs=0.005)
    assert max(factors) / mean == pytest.approx(CALIBRATION_SPREAD, abs=0.005)
    # each calibration configuration's printed interval then covers its own measurement
    assert all(r["predicted_low"] <= r["measured"] <= r["predicted_high"] for r in calib)


def test_the_frozen_hessian_calibration_is_the_recorded_calibration_configurations_factor_and_scatter():
    """The same for the Hessian-corrected prediction (``advise --hessian``): its factor and scatter
    are the report's for the two calibration rows."""
    import json
    from pathlib import Path

    from largebatch.study.hessian_noise import CALIBRATION_HESSIAN, CALIBRATION_HESSIAN_SPREAD

    rows = json.loads((Path(__file__).parents[2] / "benchmarks/results/critical_batch_validation.json").read_text())
    calib = [r for r in rows if r["role"] == "calibration"]
    factors = [r["measured"] / (r["hessian_predicted"] / r["hessian_calibration"]) for r in calib]
    mean = math.sqrt(factors[0] * factors[1])
    assert mean == pytest.approx(CALIBRATION_HESSIAN, abs=0.005)
    assert max(factors) / mean == pytest.approx(CALIBRATION_HESSIAN_SPREAD, abs=0.005)


def test_the_optimizer_flag_prints_the_uncalibrated_value_beside_the_lamb_measurement():
    from types import SimpleNamespace

    from largebatch.api import load_config
    from largebatch.study.advise import _flags

    pred = SimpleNamespace(
        calibration=CALIBRATION,
        calibration_spread=CALIBRATION_SPREAD,
        predicted=1127.0,
        sampling_low=1000.0,
        sampling_high=1300.0,
        windows=[1, 2, 3],
        negative_windows=0,
        extrapolation_factor=2.0,
    )
    layout = {"decay_within_horizon": False}
    flags = _flags(load_config("lamb_fashion_mnist", []), pred, layout)
    (flag,) = [f for f in flags if f.startswith("optimizer lamb")]
    assert f"uncalibrated here: {1127.0 / CALIBRATION:,.0f} images" in flag and "lower bound" not in flag
    assert not any(f.startswith("optimizer") for f in _flags(load_config("goyal2017_fashion_mnist", []), pred, layout))
