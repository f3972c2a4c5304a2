"""The critical batch of a whole run from a short probe of the gradient noise scale.

A probe logs, every step, unbiased estimates of |G|^2 and tr(Sigma) (McCandlish et al. 2018,
app. A.1, eq. A.2; small batches of one BN group: ``train.noise_scale_small_batch=micro_batch``).
Three steps turn them into one number for the run:

1. **Windows** (:func:`window_estimates`): consecutive windows of steps (a quarter epoch by default),
   warmup left out; in each, B_simple = sum tr(Sigma) / sum |G|^2 (the ratio of sums, not a mean of
   ratios: the per-step ratio is biased, sec. 2.2 there), with a bootstrap interval over the
   window's steps.
2. **Trend** (:func:`fit_trend`): B_simple grows as the loss falls (McCandlish et al. sec. 3, Kaplan
   et al. 2020 sec. 5.1); a power law log B = a + c log t fitted over the windows is extrapolated
   to the run's horizon (its first LR decay, or a step the user gives).
3. **Run-level average** (:func:`run_level`): eq. 2.11, S = S_min (1 + B_noise / B), applied piece by
   piece: a stretch of dS steps at the run's batch B_ref whose noise scale is B_i needs
   S_min,i = dS / (1 + B_i / B_ref) steps at the minimum and E_min,i = B_i S_min,i examples, so the
   run's E_min / S_min is the S_min-weighted mean of B_i over the steps from the end of warmup to
   the horizon.

The prediction is ``calibration x`` that average. The calibration factor is fixed on two
configurations (docs/noise_scale.md says which, with the held-out check); 1.0 means uncalibrated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

CALIBRATION = 3.36
"""Factor on the run-level average: the geometric mean of measured / predicted B_noise over the two
calibration configurations, the 28-px ResNet-8 recipe at width 16 (1,056 / 408) and at width 8
(1,437 / 329), measured by the branching yardstick (``largebatch critical-batch``); fitted
2026-12-07 20:15 UTC and frozen before any held-out configuration's branch (docs/noise_scale.md,
"Calibration"). 1.0 would mean uncalibrated."""

CALIBRATION_SPREAD = 1.30
"""How far the calibration factor itself is known: the two calibration configurations' own factors,
2.59 and 4.37, lie 1.30x either side of their geometric mean (sqrt(4.37 / 2.59)). The printed
interval is the probe's bootstrap interval divided (low end) and multiplied (high end) by it, so it
holds both the probe's sampling noise and the factor's configuration-to-configuration scatter; without
it neither calibration configuration's interval covered its own measurement. Frozen 2026-12-07
21:22 UTC, before any held-out configuration's branch (docs/noise_scale.md, "Calibration")."""


@dataclass(frozen=True)
class Window:
    """B_simple over the steps ``first_step`` to ``last_step`` (inclusive), in images, with a
    bootstrap interval; ``negative``: the window's summed |G|^2 estimate was not positive (B_simple
    is then infinite: the gradient is too small against its noise to be measured there)."""

    first_step: int
    last_step: int
    b_simple: float
    low: float
    high: float
    negative: bool

    @property
    def mid_step(self) -> float:
        return (self.first_step + self.last_step) / 2


def step_estimates(records: Iterable[dict]) -> list[tuple[int, float, float]]:
    """(step, |G|^2, tr(Sigma)) of every step from the ``noise_scale_steps`` lists of a run's train
    records (each list ends at its record's step); non-finite entries (skipped steps) are left out."""
    out = []
    for r in records:
        steps = r.get("noise_scale_steps") if r.get("kind") == "train" else None
        if not steps:
            continue
        first = r["step"] - len(steps) + 1
        for j, (g_sq, trace) in enumerate(steps):
            if math.isfinite(g_sq) and math.isfinite(trace):
                out.append((first + j, g_sq, trace))
    return out


def _ratio(rows: list[tuple[int, float, float]]) -> float:
    g = sum(r[1] for r in rows)
    return sum(r[2] for r in rows) / g if g > 0 else math.inf


def _percentiles(values: list[float], coverage: float) -> tuple[float, float]:
    values = sorted(values)
    lo = values[int((1 - coverage) / 2 * (len(values) - 1))]
    hi = values[int(math.ceil((1 + coverage) / 2 * (len(values) - 1)))]
    return lo, hi


def _chunks(estimates, window_steps: int, first_step: int) -> list[list[tuple[int, float, float]]]:
    rows = sorted(e for e in estimates if e[0] >= first_step)
    chunks: dict[int, list] = {}
    for row in rows:
        chunks.setdefault((row[0] - first_step) // window_steps, []).append(row)
    out = [chunks[k] for k in sorted(chunks)]
    if len(out) > 1 and len(out[-1]) < window_steps / 2:  # a short tail joins the window before it
        tail = out.pop()
        out[-1] = out[-1] + tail
    return out


def window_estimates(
    estimates: list[tuple[int, float, float]],
    *,
    window_steps: int,
    first_step: int = 1,
    resamples: int = 400,
    coverage: float = 0.8,
    seed: int = 0,
) -> list[Window]:
    """B_simple per window of ``window_steps`` steps from ``first_step`` on (a last window shorter
    than half joins the one before), with the ``coverage`` bootstrap interval over its steps.

    Raises:
        ValueError: ``window_steps`` < 1.
    """
    if window_steps < 1:
        raise ValueError(f"window_steps={window_steps}: give a positive number of steps")
    rng = random.Random(seed)
    out = []
    for rows in _chunks(estimates, window_steps, first_step):
        b = _ratio(rows)
        boot = [_ratio([rows[rng.randrange(len(rows))] for _ in rows]) for _ in range(resamples)]
        lo, hi = _percentiles(boot, coverage) if resamples else (b, b)
        out.append(Window(rows[0][0], rows[-1][0], b, lo, hi, negative=not math.isfinite(b)))
    return out


def fit_trend(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """Least-squares fit of log B = a + c log t over (t, B) points with t > 0 and finite B > 0;
    returns (a, c), or None with fewer than two distinct t."""
    pts = [(math.log(t), math.log(b)) for t, b in points if t > 0 and 0 < b < math.inf]
    if len({x for x, _ in pts}) < 2:
        return None
    n = len(pts)
    mx, my = sum(x for x, _ in pts) / n, sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    c = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - c * mx, c


def run_level(b_at, first_step: float, horizon_step: float, reference_batch: float, pieces: int = 200) -> float:
    """The S_min-weighted mean of ``b_at(step)`` over [first_step, horizon_step] at the run's batch
    ``reference_batch`` (eq. 2.11 piece by piece; see the module docstring)."""
    if horizon_step <= first_step:
        return b_at(first_step)
    width = (horizon_step - first_step) / pieces
    num = den = 0.0
    for i in range(pieces):
        b = b_at(first_step + (i + 0.5) * width)
        s_min = width / (1 + b / reference_batch)
        num, den = num + b * s_min, den + s_min
    return num / den


@dataclass
class Prediction:
    """What :func:`predict` found (batch sizes in images, positions in steps)."""

    windows: list[Window]
    probe_end_b: float
    """B_simple of the probe's last window."""
    probe_end_low: float
    probe_end_high: float
    trend_exponent: float | None
    """c of B ~ t^c over the probe's windows (None: one window, B taken as constant)."""
    horizon_step: int
    horizon_b: float
    """The trend's B at the horizon."""
    run_level_b: float
    """The S_min-weighted mean over [end of warmup, horizon] (module docstring)."""
    calibration: float
    predicted: float
    predicted_low: float
    predicted_high: float
    """The interval: the bootstrap's (``sampling_low``-``sampling_high``) widened by ``calibration_spread``."""
    sampling_low: float
    sampling_high: float
    """The bootstrap interval alone (the probe's sampling noise and the trend's scatter), calibrated."""
    calibration_spread: float
    coverage: float
    negative_windows: int
    flags: list[str] = field(default_factory=list)

    @property
    def extrapolation_factor(self) -> float:
        """Prediction over the probe's own last value."""
        return self.predicted / self.probe_end_b if 0 < self.probe_end_b < math.inf else math.nan

    def as_dict(self) -> dict:
        out = asdict(self)
        out["extrapolation_factor"] = self.extrapolation_factor
        return out


def _run_b(windows: list[Window], first_step: float, horizon_step: float, reference_batch: float):
    """(trend exponent, B at the horizon, run-level B) of windows whose b_simple may be resampled."""
    trend = fit_trend([(w.mid_step, w.b_simple) for w in windows])
    finite = [w.b_simple for w in windows if 0 < w.b_simple < math.inf]
    if trend is None:
        if not finite:
            return None, math.inf, math.inf
        const = finite[-1]
        return None, const, const
    a, c = trend

    def b_at(step: float) -> float:
        return math.exp(a + c * math.log(max(step, 1.0)))

    return c, b_at(horizon_step), run_level(b_at, first_step, horizon_step, reference_batch)


def _residual_bootstrap(windows: list[Window], rng: random.Random, run_level, resamples: int, coverage: float):
    """(low, high, trend exponent) of the run-level value over trends refitted to resampled residuals,
    or None with fewer than three finite windows or no resamples.

    The steps of a window are not independent (the weights drift between them), so resampling them
    understates how far windows scatter about the trend; a residual bootstrap of the trend fit
    (residuals drawn with replacement, inflated for the two fitted parameters) measures that scatter.
    :func:`predict` keeps the wider of the two intervals."""
    fit = fit_trend([(w.mid_step, w.b_simple) for w in windows])
    finite = [w for w in windows if 0 < w.b_simple < math.inf]
    if fit is None or len(finite) < 3 or not resamples:
        return None
    a, c = fit
    resid = [math.log(w.b_simple) - a - c * math.log(w.mid_step) for w in finite]
    inflate = math.sqrt(len(resid) / (len(resid) - 2)) if len(resid) > 2 else 1.0
    boot = []
    for _ in range(resamples):
        resampled = [
            Window(
                w.first_step,
                w.last_step,
                math.exp(a + c * math.log(w.mid_step) + inflate * rng.choice(resid)),
                0,
                0,
                False,
            )
            for w in finite
        ]
        boot.append(run_level(resampled))
    return (*_percentiles(boot, coverage), c)


def _seed_bootstrap(
    seed_groups, window_steps: int, first: int, rng: random.Random, run_level, resamples: int, coverage: float
):
    """(low, high) of the run-level value over probes resampled with replacement (each seed's
    estimates a unit), so the interval spans the seed-to-seed spread."""
    boot = []
    for _ in range(resamples):
        pooled = [row for _ in seed_groups for row in rng.choice(seed_groups)]
        resampled = [
            Window(rows[0][0], rows[-1][0], _ratio(rows), 0, 0, False) for rows in _chunks(pooled, window_steps, first)
        ]
        boot.append(run_level(resampled))
    return _percentiles(boot, coverage)


def _interval(estimates, windows, window_steps, first, seed_groups, rng, run_level, resamples, coverage, b_run, c):
    """(low, high, trend exponent) of :func:`predict`'s bootstrap: the widest of the steps resampled
    within windows, the trend's residuals resampled (which also refits the exponent) and, with two or
    more probes, the probes resampled; drawn from ``rng`` in that order."""
    chunks = _chunks(estimates, window_steps, first)
    boot = [
        run_level(
            [
                Window(w.first_step, w.last_step, _ratio([rows[rng.randrange(len(rows))] for _ in rows]), 0, 0, False)
                for w, rows in zip(windows, chunks)
            ]
        )
        for _ in range(resamples)
    ]
    lo, hi = _percentiles(boot, coverage) if resamples else (b_run, b_run)
    residual = _residual_bootstrap(windows, rng, run_level, resamples, coverage)
    if residual is not None:
        r_lo, r_hi, c = residual
        lo, hi = min(lo, r_lo), max(hi, r_hi)
    if seed_groups and len(seed_groups) >= 2 and resamples:
        s_lo, s_hi = _seed_bootstrap(seed_groups, window_steps, first, rng, run_level, resamples, coverage)
        lo, hi = min(lo, s_lo), max(hi, s_hi)
    return lo, hi, c


def predict(
    estimates: list[tuple[int, float, float]],
    *,
    window_steps: int,
    warmup_steps: int,
    horizon_step: int,
    reference_batch: int,
    calibration: float = CALIBRATION,
    calibration_spread: float = CALIBRATION_SPREAD,
    coverage: float = 0.8,
    resamples: int = 300,
    seed: int = 0,
    seed_groups: list[list[tuple[int, float, float]]] | None = None,
) -> Prediction:
    """Windows after warmup, the trend, its run-level average up to ``horizon_step``, and the
    calibrated prediction with a bootstrap interval: the wider of two, steps resampled within every
    window and the trend fit's residuals resampled across windows, the whole chain recomputed; with
    ``seed_groups`` (the estimates of each of two or more probes of different seeds, pooled in
    ``estimates``), also the probes resampled, so the interval spans the seed-to-seed spread. The
    printed interval is that bootstrap interval widened by ``calibration_spread`` on both sides
    (:data:`CALIBRATION_SPREAD`; 1.0 with ``calibration=1.0`` for the uncalibrated estimate).

    Raises:
        ValueError: no window after warmup (the probe ended in warmup or logged no estimates).
    """
    first = warmup_steps + 1
    windows = window_estimates(estimates, window_steps=window_steps, first_step=first, coverage=coverage, seed=seed)
    if not windows:
        raise ValueError(
            f"no noise-scale estimates after warmup (step {warmup_steps}): lengthen the probe past the warmup"
        )
    c, b_h, b_run = _run_b(windows, first, horizon_step, reference_batch)
    rng = random.Random(seed + 1)  # one stream, drawn in this order: windows, residuals, seeds

    def run_level(resampled: list[Window]) -> float:
        return _run_b(resampled, first, horizon_step, reference_batch)[2] * calibration

    lo, hi, c = _interval(
        estimates, windows, window_steps, first, seed_groups, rng, run_level, resamples, coverage, b_run, c
    )
    last = windows[-1]
    return Prediction(
        windows=windows,
        probe_end_b=last.b_simple,
        probe_end_low=last.low,
        probe_end_high=last.high,
        trend_exponent=c,
        horizon_step=horizon_step,
        horizon_b=b_h,
        run_level_b=b_run,
        calibration=calibration,
        predicted=b_run * calibration,
        predicted_low=lo / calibration_spread,
        predicted_high=hi * calibration_spread,
        sampling_low=lo,
        sampling_high=hi,
        calibration_spread=calibration_spread,
        coverage=coverage,
        negative_windows=sum(w.negative for w in windows),
    )
