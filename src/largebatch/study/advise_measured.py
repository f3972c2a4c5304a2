"""``largebatch advise --measured``: the advice's critical batch against the points a ``largebatch
critical-batch`` report measured (:mod:`largebatch.study.advise`)."""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_measured(path: str | Path) -> dict:
    """The report ``largebatch critical-batch`` wrote (``critical_batch.json``).

    Raises:
        ValueError: when the file is missing, is not JSON, or holds no ``points`` list.
    """
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(
            f"--measured {path}: no such file; give the critical_batch.json that `largebatch critical-batch` wrote"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"--measured {path}: not a readable JSON report ({err})") from None
    points = report.get("points") if isinstance(report, dict) else None
    if not isinstance(points, list) or not all(
        isinstance(p, dict) and "step" in p and "critical_batch" in p for p in points
    ):
        raise ValueError(
            f"--measured {path}: not a `largebatch critical-batch` report (no points with step and critical_batch)"
        )
    return report


def against_measured(predicted: float, report: dict) -> list[dict]:
    """``predicted`` (a critical batch in images) against every point of a branching report: per
    point the step, the measured critical batch (None when not resolved), whether it is a lower bound,
    the ratio predicted / measured and whether that lies within a factor of 2 either way, and the
    B_simple the reference run logged at that step. The target of the comparison is agreement within
    2x (Merrill et al. 2025 measure; McCandlish et al. 2018 sec. 2.2 predict B_crit ~ B_simple). The
    measured value is the point's ``b_noise`` where the report has one, else its ``critical_batch``."""
    rows = []
    for p in report["points"]:
        # B_noise where the report measured it (the quantity predicted); older reports: their critical batch
        measured = p["b_noise"] if "b_noise" in p else p["critical_batch"]
        if measured is not None and math.isinf(measured):
            measured = None
        ratio = predicted / measured if measured else None
        b_simple = p.get("b_simple")
        rows.append(
            {
                "step": p["step"],
                "measured": measured,
                "lower_bound": bool(p.get("critical_batch_is_lower_bound")),
                "ratio": ratio,
                "within_2x": ratio is not None and 0.5 <= ratio <= 2.0,
                "b_simple_there": b_simple,
                "b_simple_ratio": b_simple / measured if (b_simple is not None and measured) else None,
            }
        )
    return rows
