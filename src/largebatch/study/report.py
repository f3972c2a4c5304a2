"""Tables and figures of tuned sweeps, read from their Optuna storages (``largebatch study-report``).

A tuned study is often run in parts: one budget of epochs for the small batches and a longer one
for the large batches (Shallue et al. 2018 sec. 3.2 give every batch size its own step budget), on
several machines, or over several sessions. Every part is a set of Optuna studies named
``METHOD-bBATCH-OBJECTIVE-eEPOCHS`` in one or more storages. This module reads them all and makes
one table and one figure per objective:

- ``steps`` (Shallue et al. Fig. 1): per (method, global batch), the fewest steps to the validation
  target over every finished trial of every budget; the fit of McCandlish et al. 2018 eq. 2.11,
  ``S = S_min (1 + B_noise / B)``, over each method's points; the perfect-scaling region (steps
  halving within a tolerance per doubling) and the first batch past it (the bend).
- ``accuracy`` (Goyal et al. Fig. 1, equal epochs): per (method, global batch) at one number of
  epochs, the trial with the best final validation top-1, and its test top-1.

The chosen trial is always chosen on the validation split; its test top-1 is reported, never used.
Further seeds of a chosen trial (``largebatch sweep --tune --seeds 0,1``) are read from the study's
``confirm_sN`` attributes and reported as mean and range.
"""

from __future__ import annotations

import math
import re
import statistics

from largebatch.study.methods import METHODS
from largebatch.study.report_table import (  # noqa: F401  (re-exported)
    EDGE_FRACTION,
    Report,
    plot,
    report_markdown,
    storage_label,
    write_report,
)
from largebatch.study.scaling import fit_steps_to_target, perfect_scaling_region
from largebatch.study.storage import (  # noqa: F401  (re-exported)
    DRIVER_PACKAGES,
    OPTUNA_TABLES,
    finished_trials,
    first_line,
    shown_url,
    storage_problem,
)

STUDY_NAME = re.compile(r"^(?P<method>[a-z_]+)-b(?P<batch>\d+)-(?P<objective>steps|accuracy)-e(?P<epochs>\d+)$")
"""How ``largebatch sweep --tune`` names the study of one cell (``tune.study_name``)."""

PROTOCOL_KEYS = ("target_val_top1", "val_size", "evals_per_epoch")
"""Protocol values that must agree between the studies merged into one table."""


class ReportError(ValueError):
    """Storages that cannot make one report (none given, nothing in them, or protocols that differ)."""


def parse_study_name(name: str) -> dict | None:
    """``{"method", "batch", "objective", "epochs"}`` of a tuned cell's study name, or None."""
    m = STUDY_NAME.match(name)
    if not m or m["method"] not in METHODS:
        return None
    return {"method": m["method"], "batch": int(m["batch"]), "objective": m["objective"], "epochs": int(m["epochs"])}


def _finished(study) -> tuple[list, list]:
    """The study's finished (complete or pruned) trials, and the complete ones among them."""
    import optuna

    done = finished_trials(study)
    return done, [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]


def _confirmations(study, trial: int) -> list[dict]:
    """The further seeds' results of a study's chosen trial (number ``trial``), in seed order; those of
    a trial chosen earlier, before later trials beat it, are left out."""
    found = []
    for key, value in study.user_attrs.items():
        m = re.fullmatch(r"confirm_s(\d+)", key)
        if m and isinstance(value, dict) and value.get("trial", trial) == trial:
            found.append({"seed": int(m[1]), **value})
    return sorted(found, key=lambda c: c["seed"])


def searched_bounds(trials: list) -> dict[str, tuple[float, float, bool]]:
    """Per parameter, ``(low, high, log)`` of the union of the ranges ``trials`` drew it from: a cell
    searched again with a wider range (``sweep --tune --search-range`` into another storage) is judged by
    everything searched."""
    bounds: dict[str, tuple[float, float, bool]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            low, high = getattr(dist, "low", None), getattr(dist, "high", None)
            if low is None or high is None:
                continue
            if name in bounds:
                low, high = min(low, bounds[name][0]), max(high, bounds[name][1])
            bounds[name] = (low, high, bool(getattr(dist, "log", False)))
    return bounds


def params_at_edge(trial, bounds: dict[str, tuple[float, float, bool]] | None = None) -> list[str]:
    """Names of ``trial``'s parameters that lie within ``EDGE_FRACTION`` of either bound of their
    distribution (Optuna's ``FloatDistribution`` / ``IntDistribution``; others are skipped), measured
    on the log scale for log-searched parameters. ``bounds`` (``searched_bounds`` of the cell's trials)
    replaces the trial's own distributions where given."""
    names = []
    for name, value in trial.params.items():
        dist = trial.distributions.get(name)
        low, high = getattr(dist, "low", None), getattr(dist, "high", None)
        log = getattr(dist, "log", False)
        if bounds and name in bounds:
            low, high, log = bounds[name]
        if low is None or high is None or high <= low:
            continue
        if log:
            position = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        else:
            position = (value - low) / (high - low)
        if position < EDGE_FRACTION or position > 1 - EDGE_FRACTION:
            names.append(name)
    return names


def _row(cell: dict, study, best, complete: list) -> dict:
    attrs = best.user_attrs
    tests = [attrs.get("top1")]
    confirms = _confirmations(study, best.number)
    tests += [c.get("top1") for c in confirms]
    tests = [t for t in tests if t is not None]
    reached = [t.user_attrs["steps_to_val_target"] for t in complete if t.user_attrs.get("steps_to_val_target")]
    return {
        "method": cell["method"],
        "global_batch_size": cell["batch"],
        "epochs": cell["epochs"],
        "study": study.study_name,
        "storage": cell.get("storage"),
        "trial": best.number,
        "params": {k: round(v, 6) for k, v in best.params.items()},
        "overrides": attrs.get("overrides", []),
        "value": best.value,
        "steps_to_target": attrs.get("steps_to_val_target"),
        "fewest_steps_in_study": min(reached) if reached else None,
        "val_top1": attrs.get("val_top1"),
        "best_val_top1": attrs.get("best_val_top1"),
        "test_top1": attrs.get("top1"),
        "test_top1_mean": statistics.fmean(tests) if tests else None,
        "test_top1_min": min(tests) if tests else None,
        "test_top1_max": max(tests) if tests else None,
        "seeds": len(tests),
        "seed_steps_to_target": [attrs.get("steps_to_val_target")] + [c.get("steps_to_val_target") for c in confirms],
        "run_dir": attrs.get("run_dir"),
        "machine": attrs.get("machine"),  # set on trials merged from another machine (merge_trials)
    }


def _best_for_steps(complete: list):
    """The trial with the fewest steps to the target, or (none reached) the highest best validation
    top-1: values of studies with different budgets are not comparable, these are."""
    reached = [t for t in complete if t.user_attrs.get("steps_to_val_target")]
    if reached:
        return min(reached, key=lambda t: (t.user_attrs["steps_to_val_target"], t.number))
    return max(complete, key=lambda t: (t.user_attrs.get("best_val_top1") or 0.0, -t.number))


def collect(
    storages: list[str],
    objective: str,
    *,
    epochs: int | None = None,
    methods: list[str] | None = None,
    batch_sizes: list[int] | None = None,
    study_names: set[str] | None = None,
) -> Report:
    """Read every tuned cell's study of ``objective`` in ``storages`` and choose, per (method, global
    batch), the best trial over all of them: fewest steps to the target (``steps``; budgets merged),
    or best final validation top-1 at ``epochs`` (``accuracy``).

    Args:
        storages: Optuna storage URLs (``sqlite:///path/study.db``, PostgreSQL, MySQL).
        objective: ``steps`` or ``accuracy``.
        epochs: keep only studies with this many epochs (required for ``accuracy`` when the
            storages hold several budgets of one cell).
        methods, batch_sizes, study_names: keep only these (None: all).

    Raises:
        ReportError: no storage, a storage that cannot be read (see :func:`storage_problem`: a bad URL,
            a driver not installed, a file that is not an Optuna study's SQLite database), a storage
            without tuned studies of the objective, several budgets of one cell at equal epochs, or
            merged studies whose target or validation split differ.
    """
    if not storages:
        raise ReportError("give at least one storage URL (e.g. sqlite:///runs/study/study.db)")
    for url in storages:  # every storage checked before any is read
        if problem := storage_problem(url, existing=True):
            raise ReportError(problem)
    protocol: dict = {}
    keep = {"epochs": epochs, "methods": methods, "batch_sizes": batch_sizes, "study_names": study_names}
    cells: dict[tuple[str, int], list] = {}
    for url in storages:
        for cell, study in _cells_of(url, objective, keep, protocol):
            cells.setdefault((cell["method"], cell["batch"]), []).append((cell, study))
    if not cells:
        raise ReportError(f"no tuned studies of objective {objective!r} in {', '.join(storages)}")
    order = list(methods or METHODS)  # rows in the order asked, else in the order of METHODS
    rows = []
    for (method, batch), studies in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        if (row := _cell_row(method, batch, studies, objective)) is not None:
            rows.append(row)
    report = Report(objective=objective, rows=rows, protocol=protocol, storages=list(storages))
    if objective == "steps":
        _fit(report)
    return report


def _cells_of(url: str, objective: str, keep: dict, protocol: dict) -> list[tuple[dict, object]]:
    """(cell, study) of each tuned study of ``objective`` in storage ``url`` that ``keep`` keeps (its
    ``epochs``, ``methods``, ``batch_sizes`` and ``study_names``); the studies' protocol values are
    added to ``protocol``.

    Raises:
        ReportError: the storage cannot be read, or a study's protocol differs from another's.
    """
    import optuna

    try:
        names = optuna.get_all_study_names(storage=url)
    except Exception as err:  # optuna raises sqlalchemy's and its own errors (server down, old schema)
        raise ReportError(f"storage {shown_url(url)}: cannot be read ({first_line(err)})") from None
    found = []
    for name in names:
        cell = parse_study_name(name)
        if cell is None or cell["objective"] != objective:
            continue
        if (keep["epochs"] is not None and cell["epochs"] != keep["epochs"]) or (
            keep["study_names"] is not None and name not in keep["study_names"]
        ):
            continue
        if (keep["methods"] and cell["method"] not in keep["methods"]) or (
            keep["batch_sizes"] and cell["batch"] not in keep["batch_sizes"]
        ):
            continue
        study = optuna.load_study(study_name=name, storage=url)
        _agree(protocol, study.user_attrs.get("protocol") or {}, name, url)
        cell["storage"] = url
        found.append((cell, study))
    return found


def _agree(protocol: dict, recorded: dict, name: str, url: str) -> None:
    """Add a study's recorded protocol values to ``protocol``; raises ReportError where they differ."""
    for key in PROTOCOL_KEYS:
        if key in recorded:
            if key in protocol and protocol[key] != recorded[key]:
                raise ReportError(
                    f"study {name} in {url} has {key} {recorded[key]}, another study {protocol[key]}: "
                    "a report merges studies of one protocol; give the storages separately"
                )
            protocol[key] = recorded[key]


def _cell_row(method: str, batch: int, studies: list, objective: str) -> dict | None:
    """The row of one (method, global batch) cell from its studies (one per budget and storage): its
    best trial over all of them, with counts and times over every trial; None without a complete one.

    Raises:
        ReportError: equal epochs (``accuracy``) with studies at several budgets.
    """
    if objective == "accuracy" and len({c["epochs"] for c, _ in studies}) > 1:
        budgets = sorted(c["epochs"] for c, _ in studies)
        raise ReportError(
            f"{method} at global batch {batch} has studies at {budgets} epochs: equal epochs needs one; give --epochs"
        )
    candidates = []
    all_trials: list = []
    for cell, study in studies:
        trials, complete = _finished(study)
        all_trials += trials
        if complete:
            best = _best_for_steps(complete) if objective == "steps" else study.best_trial
            candidates.append((cell, study, best, complete))
    if not candidates:
        return None
    if objective == "steps":
        pick = min(
            candidates,
            key=lambda c: (
                c[2].user_attrs.get("steps_to_val_target") or math.inf,
                -(c[2].user_attrs.get("best_val_top1") or 0.0),
            ),
        )
    else:
        pick = max(candidates, key=lambda c: c[2].value)
    row = _row(*pick)
    row["budgets_epochs"] = sorted({c["epochs"] for c, _ in studies})
    row["study_name_in_storages"] = sum(1 for _, st in studies if st.study_name == row["study"])
    row["params_at_edge"] = params_at_edge(pick[2], searched_bounds(all_trials))
    _count(row, all_trials)
    return row


def _count(row: dict, all_trials: list) -> None:
    """A cell's trial counts and trial wall time, over every budget of the cell, not only the chosen
    trial's study."""
    import optuna

    row["trials"] = len(all_trials)
    row["pruned"] = sum(1 for t in all_trials if t.state != optuna.trial.TrialState.COMPLETE)
    row["diverged"] = sum(1 for t in all_trials if "diverged" in t.user_attrs)
    # trial wall time on this study's own machine, and apart from it that of trials merged from
    # other machines (merge_trials tags them with "machine"), per machine: the two do not add up
    row["wall_s"], others = 0.0, {}
    for t in all_trials:
        wall_s, machine = t.user_attrs.get("trial_wall_s", 0.0), t.user_attrs.get("machine")
        if machine is None:
            row["wall_s"] += wall_s
        else:
            others[machine] = others.get(machine, 0.0) + wall_s
    row["other_machines_wall_s"] = others


def _fit(report: Report) -> None:
    """Per method: the fit of S = S_min (1 + B_noise / B) over its cells that reached the target, and
    its perfect-scaling region and bend (the steps objective)."""
    rows = report.rows
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [(r["global_batch_size"], r["steps_to_target"]) for r in rows if r["method"] == method]
        pts = [(b, s) for b, s in pts if s]
        if len(pts) >= 3:
            try:
                report.fits[method] = fit_steps_to_target([b for b, _ in pts], [s for _, s in pts]).as_dict()
            except ValueError as err:  # the points do not bend: reported, not fitted
                report.fits[method] = {"error": str(err)}
        region = perfect_scaling_region([b for b, _ in pts], [s for _, s in pts]) if pts else []
        after = [b for b, _ in pts if region and b > region[-1]]
        report.scaling[method] = {
            "perfect_scaling_region": region,
            "bend_after": after[0] if after else None,
            "batch_sizes_reaching_target": len(pts),
        }
