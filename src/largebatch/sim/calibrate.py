"""Fit the alpha (latency) and beta (seconds per byte) of one link type to measured all-reduces.

Each measurement is ``(nbytes, world_size, algorithm, seconds)``: the median time of one all-reduce
of ``nbytes`` per rank (the tensor size, e.g. ``numel * element_size``) over ``world_size`` ranks
that all sit behind the same kind of link (one node, or one GPU per node), with ``algorithm``
``"ring"`` or ``"halving_doubling"``. The model of such a run is linear in (alpha, beta)::

    seconds = steps * alpha + sent_bytes * beta
    ring:              steps = 2(N-1),         sent = 2(N-1)/N * nbytes
    halving_doubling:  steps = 2 log2(P) (+2), sent = 2(P-1)/P * nbytes (+2 nbytes), P = 2^floor(log2 N)

(the +2 terms are the binary-blocks steps of a non-power-of-two N; Goyal et al. 2017, 5.3). The fit
minimizes the sum of squared *relative* errors, so that microsecond and second-long measurements
weigh alike. Pure Python; no numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class AlphaBetaFit:
    """Fitted link: ``alpha_s`` per step and ``beta_s_per_byte``. ``relative_errors``: (model -
    measured) / measured for each measurement, in input order; ``median_abs_error`` and
    ``max_abs_error``: the median and maximum of their absolute values (fractions, not seconds)."""

    alpha_s: float
    beta_s_per_byte: float
    relative_errors: tuple[float, ...]
    median_abs_error: float
    max_abs_error: float

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return 1 / self.beta_s_per_byte if self.beta_s_per_byte > 0 else float("inf")


def _regressors(nbytes: float, world_size: int, algorithm: str) -> tuple[float, float]:
    n = world_size
    if algorithm == "ring":
        return 2 * (n - 1), 2 * (n - 1) / n * nbytes
    if algorithm == "halving_doubling":
        p = 1 << (n.bit_length() - 1)
        extra = 2 if p != n else 0
        return 2 * (p.bit_length() - 1) + extra, 2 * (p - 1) / p * nbytes + extra * nbytes
    raise ValueError(f"algorithm={algorithm!r} cannot be fitted; accepted: 'ring', 'halving_doubling'")


def relative_least_squares(rows: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(x, y) minimizing sum_i (a_i x + b_i y - 1)^2 over ``rows`` of (a_i, b_i): the linear model
    a x + b y = t in squared *relative* error once each row is divided by its t. None when the
    rows do not separate x from y (fewer than two, or all of one ratio a / b)."""
    saa = sum(a * a for a, _ in rows)
    sab = sum(a * b for a, b in rows)
    sbb = sum(b * b for _, b in rows)
    sa = sum(a for a, _ in rows)
    sb = sum(b for _, b in rows)
    det = saa * sbb - sab * sab
    if len(rows) < 2 or det <= 1e-12 * saa * sbb:
        return None
    return (sa * sbb - sb * sab) / det, (sb * saa - sa * sab) / det


def fit_alpha_beta(measurements) -> AlphaBetaFit:
    """Least-squares alpha and beta from ``[(nbytes, world_size, algorithm, seconds), ...]``.

    Raises:
        ValueError: a malformed measurement (non-positive size or time, world_size < 2, unknown
            algorithm), or too few distinct measurements to separate alpha from beta.
    """
    rows = []
    for i, item in enumerate(measurements):
        nbytes, world_size, algorithm, seconds = item
        if not (nbytes > 0 and seconds > 0 and int(world_size) == world_size and world_size >= 2):
            raise ValueError(
                f"measurements[{i}]={item!r} is invalid; accepted: (nbytes > 0, "
                f"world_size >= 2, 'ring' | 'halving_doubling', seconds > 0)"
            )
        a, b = _regressors(nbytes, int(world_size), algorithm)
        rows.append((a / seconds, b / seconds))  # divided by t: relative residuals
    solved = relative_least_squares(rows)
    if solved is None:
        raise ValueError(
            "measurements must contain at least two points that differ in steps/bytes "
            "ratio (e.g. a small and a large message) to separate alpha from beta"
        )
    alpha, beta = solved
    errors = tuple(a * alpha + b * beta - 1 for a, b in rows)
    return AlphaBetaFit(alpha, beta, errors, median(abs(e) for e in errors), max(abs(e) for e in errors))
