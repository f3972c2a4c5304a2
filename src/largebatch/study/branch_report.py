"""What ``largebatch critical-batch`` (:mod:`largebatch.study.branch`) reads from its branches' run
directories, and its report: the decay design's budgets and loss levels, each branch's final
validation loss, and per branch point the curves, the images to each level, the fits and the
critical batch (``critical_batch.json``, and its table, :func:`report_text`)."""

from __future__ import annotations

import math
from pathlib import Path

from largebatch.study.branch_fit import (
    clock_b_noise,
    fit_b_noise_levels,
    images_to_level_log,
    run_level_b_noise,
    tolerance_critical,
)
from largebatch.summary import RunSummary
from largebatch.train.metrics import read_metrics

DECAY_BUDGET_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
"""The budgets of the decay design, as fractions of ``budget_images``: the curve of annealed loss
against images, 8x in images from its first point to its last."""
DECAY_GRID_FRACTION = 0.5
"""The budget (fraction of ``budget_images``) at which the decay design's LR grid runs: the middle
of the curve in log images, so that the LR it picks is off by as little at the shortest budget
(which prefers a higher peak LR) as at the longest."""


def decay_budgets(budget_images: int) -> list[int]:
    """The images of each batch's branches for a full budget of ``budget_images``
    (:data:`DECAY_BUDGET_FRACTIONS` of it)."""
    return [int(budget_images * f) for f in DECAY_BUDGET_FRACTIONS]


BEFORE_FIRST = "before_first_budget"
"""The report's images for a level a decay curve was already below at its shortest budget."""
DECAY_LEVEL_FRACTIONS = (0.25, 0.5, 0.75)
"""Loss levels: fractions of the way from the smallest batch's loss at its shortest budget down to
its loss at the full budget (both the seeds' mean). Not 0: the shortest budget's own loss lies below
about half of the seeds' curves at their first point by construction, so most batches' crossings
there are not resolved and the few that are decide the level alone."""


def _val_loss_at(run_dir: Path) -> float | None:
    """The lowest validation loss over a run's evaluations (None without any): a branch's one
    evaluation, at the end of its decay."""
    evals = [r["val_loss"] for r in read_metrics(run_dir) if r.get("kind") == "eval" and r.get("val_loss") is not None]
    finite = [v for v in evals if math.isfinite(v)]
    return min(finite) if finite else None


def _lowest(run: Path) -> float:
    """Lowest validation loss of one branch (:func:`_val_loss_at`); inf when it diverged or has none."""
    loss = None if RunSummary.read(run).diverged else _val_loss_at(run)
    return loss if loss is not None and math.isfinite(loss) else math.inf


def _mean_lowest(runs: dict[int, Path]) -> float:
    """Mean over the seeds' runs of their lowest validation loss ({seed: run dir}); inf when any diverged."""
    losses = [_lowest(r) for r in runs.values()]
    return sum(losses) / len(losses) if losses else math.inf


def _best_cell(cells: dict) -> str | None:
    """The LR tag whose first-seed branch ended lowest (the unscaled LR included); None if all diverged."""
    first = {t: _lowest(next(iter(c["runs"].values()))) for t, c in cells.items()}
    best = min(first, key=first.get)
    return best if math.isfinite(first[best]) else None


def _decay_curve(runs: dict[int, Path]) -> list[tuple[float, float]]:
    """(budget images, final validation loss) of one seed's decay branches ({budget: run dir}), the
    diverged and unfinished left out."""
    out = []
    for budget, run in sorted(runs.items()):
        loss = _lowest(run)  # one evaluation, at the end of the decay
        if math.isfinite(loss):
            out.append((float(budget), loss))
    return out


def _decay_final(plan: dict, budget: int) -> float:
    """The seeds' mean final loss at the full ``budget`` of one batch's decay plan; inf if any diverged."""
    losses = [_lowest(r[budget]) if budget in r else math.inf for r in plan["runs"].values()]
    return sum(losses) / len(losses) if losses else math.inf


def _report(points, results, base_loss: dict, batch_sizes, tolerance, ref_batch, min_reduction, seeds) -> dict:
    """The report: per point, the annealed-loss curves, the images each batch
    needed for each loss level (log-interpolated between budgets), the joint fit of eq. 2.11, the
    clock reading and the tolerance-based critical batch."""
    rows = [
        _point_row(
            p, *results[p.step], base_loss[p.step], tolerance=tolerance, min_reduction=min_reduction, seeds=seeds
        )
        for p in points
    ]
    return {
        "branch_schedule": "decay",
        "reference_batch": ref_batch,
        "tolerance": tolerance,
        "min_reduction": min_reduction,
        "batch_sizes": sorted(batch_sizes),
        "seeds": list(seeds),
        "level_fractions": list(DECAY_LEVEL_FRACTIONS),
        "budget_fractions": list(DECAY_BUDGET_FRACTIONS),
        "points": rows,
        "run_level_b_noise": run_level_b_noise([(r["step"], r["b_noise"]) for r in rows], ref_batch),
    }


def _point_row(p, budget: int, per_batch: dict, base: float, *, tolerance, min_reduction, seeds) -> dict:
    """The report's row of one branch point (``per_batch``: each batch's decay plan at ``budget``)."""
    smallest = min(per_batch)
    curves = {b: {x: _decay_curve(plan["runs"][x]) for x in seeds} for b, plan in per_batch.items()}
    final = {b: _decay_final(plan, budget) for b, plan in per_batch.items()}
    reduction = base - final[smallest]
    small = {}  # the smallest batch's seed-mean curve
    for x in seeds:
        for e, loss in curves[smallest][x]:
            small.setdefault(e, []).append(loss)
    small_curve = sorted((e, sum(v) / len(v)) for e, v in small.items() if len(v) == len(seeds))
    levels = _levels(small_curve, curves, sorted(per_batch), seeds)
    joint = fit_b_noise_levels(_observations(levels, None), budget) if levels and reduction > 0 else None
    per_seed_joint = [fit_b_noise_levels(_observations(levels, k), budget) for k in range(len(seeds))] if levels else []
    spread = [v for v in [joint, *per_seed_joint] if v is not None]
    resolved = reduction >= min_reduction and joint is not None
    crit = _critical(levels, sorted(per_batch), tolerance)
    clock, clock_each = (
        clock_b_noise(smallest, small_curve, budget, {b: (v if math.isfinite(v) else None) for b, v in final.items()})
        if len(small_curve) >= 2 and reduction > 0
        else (None, {})
    )
    b_noise = joint if resolved else None
    return {
        "step": p.step,
        "checkpoint": str(p.checkpoint),
        "lr": p.lr,
        "val_loss_at_checkpoint": base,
        "budget_images": budget,
        "budgets_images": decay_budgets(budget),
        "grid_budget_images": int(budget * DECAY_GRID_FRACTION),
        "smallest_batch_reduction": reduction,
        "branches": _branches(per_batch, curves, final, base, budget, seeds),
        "levels": levels,
        "b_noise": b_noise,
        "b_noise_low": min(spread) if resolved and spread else None,
        "b_noise_high": max(spread) if resolved and spread else None,
        "critical_batch": crit[0] if resolved and crit else None,
        "critical_batch_is_lower_bound": bool(resolved and crit and crit[1]),
        "b_simple": p.b_simple,
        "ratio_b_simple_to_measured": (p.b_simple / b_noise) if (p.b_simple and b_noise) else None,
        "b_noise_clock": clock,
        "b_noise_clock_per_batch": {str(b): v for b, v in clock_each.items()},
    }


def _levels(small_curve: list, curves: dict, batches: list[int], seeds) -> dict:
    """The loss levels (:data:`DECAY_LEVEL_FRACTIONS` of the way down the smallest batch's seed-mean
    curve) and, per batch and seed, the images its curve needed to reach each; empty when that curve
    does not fall."""
    levels = {}
    if len(small_curve) >= 2 and small_curve[0][1] > small_curve[-1][1]:
        top, bottom = small_curve[0][1], small_curve[-1][1]
        for f in DECAY_LEVEL_FRACTIONS:
            level = top - f * (top - bottom)
            e = {b: [images_to_level_log(curves[b][x], level) for x in seeds] for b in batches}
            images = {str(b): [BEFORE_FIRST if x is not None and math.isnan(x) else x for x in v] for b, v in e.items()}
            levels[f"{f:g}"] = {"val_loss": level, "images": images}
    return levels


def _observations(levels: dict, seed_index: int | None) -> list:
    """(level key, batch, images) of every seed (or of seed ``seed_index`` alone) for the fit: one E_min
    per level and seed, as a seed's curves can sit lower at every batch (its own data order and
    precise-BN sample), which one E_min per level would read as a batch effect."""
    return [
        ((i, k), int(b), e)
        for i, lv in enumerate(levels.values())
        for b, per_seed in lv["images"].items()
        for k, e in enumerate(per_seed)
        if (seed_index is None or k == seed_index) and e != BEFORE_FIRST
    ]


def _critical(levels: dict, batches: list[int], tolerance: float) -> tuple[float, bool] | None:
    """The tolerance-based critical batch at the middle level, from the seeds' mean images."""
    middle = levels.get("0.5")
    if middle is None:
        return None
    mean_images = [
        (sum(v) / len(v) if all(x is not None and x != BEFORE_FIRST for x in v) else None)
        for v in (middle["images"][str(b)] for b in batches)
    ]
    return tolerance_critical(batches, mean_images, tolerance)


def _branches(per_batch: dict, curves: dict, final: dict, base: float, budget: int, seeds) -> list[dict]:
    """Per batch: its LR grid's losses, the LR chosen, its decay curve per seed and its reduction."""
    branches = []
    for b, plan in sorted(per_batch.items()):
        branches.append(
            {
                "batch": b,
                "steps": budget // b,
                "lrs": {
                    t: {
                        "multiplier": c["multiplier"],
                        "lr": c["lr"],
                        "val_loss_at_grid_budget": {
                            str(x): (loss if math.isfinite(loss) else None)
                            for x, loss in ((x, _lowest(r)) for x, r in c["runs"].items())
                        },
                    }
                    for t, c in plan["grid"].items()
                },
                "chosen_lr": plan["chosen"],
                "val_loss_by_budget": {str(x): {str(int(e)): v for e, v in curves[b][x]} for x in seeds},
                "best_val_loss": final[b] if math.isfinite(final[b]) else None,
                "reduction": base - final[b] if math.isfinite(final[b]) else None,
            }
        )
    return branches


def _fmt(x: float | None, bound: bool = False) -> str:
    if x is None:
        return "not resolved"
    return "inf" if math.isinf(x) else f"{'>= ' if bound else ''}{x:,.0f}"


def report_text(report: dict) -> str:
    lines = [
        f"Critical batch by branching (Merrill et al. 2025), read with McCandlish et al. 2018 eq. 2.11: each branch "
        f"decays its LR linearly to 0 over its budget; per batch an LR grid around the linear rule from the "
        f"reference batch {report['reference_batch']} and the reference's own LR at "
        f"{DECAY_GRID_FRACTION:g} of the budget on seed {report['seeds'][0]}, then budgets of "
        f"{', '.join(f'{f:g}' for f in report['budget_fractions'])} of it at the winning LR on seeds "
        f"{report['seeds']}; images to reach loss levels between the smallest batch's shortest and longest "
        "budget's losses.",
        "B_noise: E(B) = E_min,level (1 + B/B_noise) fitted over all levels and seeds, one E_min per level and seed (range: each seed alone). "
        f"Tolerance-based: the largest batch needing at most {1 + report['tolerance']:.2g}x the smallest batch's "
        "images.",
        "",
        "| step | val loss there | budget (images) | "
        + " | ".join(f"B={b}" for b in report["batch_sizes"])
        + " | B_noise (range) | B_noise on the smallest batch's clock | tolerance-based critical batch | B_simple there "
        "| B_simple / B_noise |",
        "|---|---|---|" + "---|" * len(report["batch_sizes"]) + "---|---|---|---|---|",
    ]
    for r in report["points"]:
        cells = ["diverged" if e["reduction"] is None else f"{e['reduction']:+.3f}" for e in r["branches"]]
        b_noise = _fmt(r["b_noise"])
        if r["b_noise"] is not None:
            b_noise += f" ({_fmt(r['b_noise_low'])}-{_fmt(r['b_noise_high'])})"
        ratio = "" if r["ratio_b_simple_to_measured"] is None else f"{r['ratio_b_simple_to_measured']:.2f}"
        b_simple = "" if r["b_simple"] is None else f"{r['b_simple']:.0f}"
        lines.append(
            f"| {r['step']} | {r['val_loss_at_checkpoint']:.4f} | {r['budget_images']:,} | "
            + " | ".join(cells)
            + f" | {b_noise} | {_fmt(r.get('b_noise_clock'))} | "
            f"{_fmt(r['critical_batch'], r['critical_batch_is_lower_bound'])} | {b_simple} | {ratio} |"
        )
    lines.append("")
    lines.append(
        "Clock: the images batch B needed over those the smallest batch needed for the same loss (its curve "
        "read at B's final loss), turned into B_noise by eq. 2.11 and fitted over the batches. "
        "Cells: the validation loss reduction at the full budget (checkpoint minus the seeds' mean final loss at the "
        "winning LR; higher is better). Not resolved: the "
        f"smallest batch reduced the loss by less than {report.get('min_reduction', 0):g} nats even after the "
        "budget's doublings, or the fit had fewer than two batches; give a larger --budget-images."
    )
    if report.get("run_level_b_noise") is not None:
        lines.append(
            f"B_noise averaged over the steps between the first and the last point as eq. 2.11 weighs them: "
            f"{_fmt(report['run_level_b_noise'])} images (what `largebatch advise` predicts)."
        )
    return "\n".join(lines)
