"""The readings of ``largebatch critical-batch`` (:mod:`largebatch.study.branch`): images to a loss
level on a decay curve, the joint fit of McCandlish et al. 2018 eq. 2.11 over levels, the clock
reading, the tolerance-based critical batch, the run-level average over branch points, and the
budget loop's verdict. Pure functions of numbers (no run is read here)."""

from __future__ import annotations

import math
from collections.abc import Hashable

from largebatch.study.noise_probe import run_level


def images_to_level_log(curve: list[tuple[float, float]], level: float) -> float | None:
    """The images at which ``curve`` ((images, validation loss) points at increasing images > 0, one
    per budget of the decay design) first reaches ``level``, interpolated linearly in log images
    (annealed loss falls about linearly in log budget); None when never reached, NaN when already
    below the level at the first point (reached at fewer images than the curve resolves)."""
    if not curve:
        return None
    if curve[0][1] <= level:
        return float(curve[0][0]) if curve[0][1] == level else math.nan
    for (e0, l0), (e1, l1) in zip(curve, curve[1:]):
        if l1 == level:
            return float(e1)
        if l1 < level:
            f = (l0 - level) / (l0 - l1)
            return math.exp(math.log(e0) + f * (math.log(e1) - math.log(e0)))
    return None


def fit_b_noise_levels(observations: list[tuple[Hashable, float, float | None]], budget_images: float) -> float | None:
    """B_noise of E(B) = E_min,l (1 + B / B_noise) fitted jointly over loss levels l, one E_min per
    level and one B_noise for all (McCandlish et al. 2018, eq. 2.11), by least squares on log E.

    ``observations``: (level key, batch B, images E to reach the level, or None when the branch
    never reached it within ``budget_images``). A crossing within the first two steps (E < 2 B) is
    not resolved by the branch and is left out; one never reached counts only if the fit puts it
    below the budget (censored). B_noise is searched on a log grid from 1 to 10^7 images and infinity
    (perfect scaling over the range). None without two batches of resolved crossings."""
    seen = [(lv, b, e) for lv, b, e in observations if e is None or e >= 2 * b]
    resolved = [(lv, b, math.log(e)) for lv, b, e in seen if e is not None and e > 0]
    if len({b for _, b, _ in resolved}) < 2:
        return None
    censored = [(lv, b) for lv, b, e in seen if e is None]
    levels = sorted({lv for lv, _, _ in resolved})
    log_budget = math.log(budget_images)
    best = None
    for b_noise in [10 ** (k / 50) for k in range(0, 351)] + [math.inf]:
        f = (lambda b: 0.0) if math.isinf(b_noise) else (lambda b, bn=b_noise: math.log1p(b / bn))
        e_min = {
            lv: sum(y - f(b) for l2, b, y in resolved if l2 == lv) / sum(1 for l2, _, _ in resolved if l2 == lv)
            for lv in levels
        }
        sse = sum((y - e_min[lv] - f(b)) ** 2 for lv, b, y in resolved)
        sse += sum(max(0.0, log_budget - e_min[lv] - f(b)) ** 2 for lv, b in censored if lv in e_min)
        if best is None or sse < best[0] - 1e-12:
            best = (sse, b_noise)
    return best[1]


def clock_b_noise(
    smallest_batch: int,
    smallest_curve: list[tuple[float, float]],
    budget_images: float,
    final_losses: dict,
) -> tuple[float | None, dict]:
    """B_noise read with the smallest batch's loss curve as the clock: for each larger batch B, the
    images E_0 the smallest batch B_0 needed to reach B's final loss L_B (interpolated on
    ``smallest_curve``, (images, annealed loss) points at increasing budgets, by
    :func:`images_to_level_log`) give r = D / E_0, the images B needs for what B_0 does with E_0;
    eq. 2.11 says r = (1 + B / B_noise) / (1 + B_0 / B_noise). Returns (B_noise of a least-squares
    fit of log r over the batches, {B: the B_noise of B alone}); r <= 1 reads as infinite (no cost
    over the smallest batch); a final loss the smallest batch never reached within its budget, or
    was already below at its shortest budget, is left out. The final losses are the least noisy
    numbers a branch gives; the level crossings of :func:`fit_b_noise_levels` are interpolated
    between budgets."""
    ratios = {}
    for b, loss in final_losses.items():
        if b == smallest_batch or loss is None or not math.isfinite(loss):
            continue
        e0 = images_to_level_log(smallest_curve, loss)
        if e0 is None or not e0 > 0:
            continue
        ratios[b] = budget_images / e0
    each = {
        b: (math.inf if r <= 1 or b <= r * smallest_batch else (b - r * smallest_batch) / (r - 1))
        for b, r in ratios.items()
    }
    if not ratios:
        return None, each
    best = None
    for b_noise in [10 ** (k / 50) for k in range(0, 351)] + [math.inf]:
        sse = 0.0
        for b, r in ratios.items():
            model = 1.0 if math.isinf(b_noise) else (1 + b / b_noise) / (1 + smallest_batch / b_noise)
            sse += (math.log(r) - math.log(model)) ** 2
        if best is None or sse < best[0] - 1e-12:
            best = (sse, b_noise)
    return best[1], each


def tolerance_critical(
    batch_sizes: list[int], images: list[float | None], tolerance: float
) -> tuple[float, bool] | None:
    """(largest B whose images to the level are at most ``1 + tolerance`` times the smallest batch's,
    interpolated on log2 B; whether every batch passed, a lower bound). A batch that never reached
    the level fails. None when the smallest batch did not reach it."""
    pts = sorted(zip(batch_sizes, images))
    ref = pts[0][1]
    if ref is None:
        return None
    limit = (1 + tolerance) * ref
    for (b0, e0), (b1, e1) in zip(pts, pts[1:]):
        if e1 is None or e1 > limit:
            if e1 is None or e1 == e0:
                return float(b0), False
            f = (limit - e0) / (e1 - e0)
            return 2 ** (math.log2(b0) + f * (math.log2(b1) - math.log2(b0))), False
    return float(pts[-1][0]), True


def run_level_b_noise(
    points: list[tuple[int, float]], reference_batch: int, start: float | None = None, end: float | None = None
) -> float | None:
    """B_noise measured at two or more steps, averaged over the steps from ``start`` to ``end``
    (default: the first and the last point) as eq. 2.11 weighs them: log B linear in log step
    between the points, held at the end points' values beyond them."""
    pts = sorted((s, b) for s, b in points if s > 0 and b is not None and 0 < b < math.inf)
    if len(pts) < 2:
        return None
    logs = [(math.log(s), math.log(b)) for s, b in pts]

    def b_at(step: float) -> float:
        x = math.log(max(step, 1.0))
        if x <= logs[0][0]:
            return math.exp(logs[0][1])
        for (x0, y0), (x1, y1) in zip(logs, logs[1:]):
            if x <= x1:
                return math.exp(y0 + (y1 - y0) * (x - x0) / (x1 - x0))
        return math.exp(logs[-1][1])

    lo = pts[0][0] if start is None else start
    hi = pts[-1][0] if end is None else end
    return run_level(b_at, lo, hi, reference_batch)


def budget_verdict(
    reduction: float, checkpoint_loss: float, min_reduction: float, doubling: int, max_doublings: int
) -> str:
    """What the budget loop does after the smallest batch's branches at one budget: ``"enough"``
    (the reduction reached ``min_reduction``), ``"double"`` (it did not, and doublings are left),
    ``"exhausted"`` (it did not after ``max_doublings``) or ``"hopeless"`` (the checkpoint's loss is
    itself below ``min_reduction``: no budget can reduce it that much, so no doubling is spent)."""
    if reduction >= min_reduction:
        return "enough"
    if checkpoint_loss < min_reduction:
        return "hopeless"
    return "double" if doubling < max_doublings else "exhausted"
