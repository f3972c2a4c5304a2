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

import json
import math
import os
import re
import sqlite3
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from largebatch.study.scaling import fit_steps_to_target, perfect_scaling_region
from largebatch.study.sweep import METHODS

STUDY_NAME = re.compile(r"^(?P<method>[a-z_]+)-b(?P<batch>\d+)-(?P<objective>steps|accuracy)-e(?P<epochs>\d+)$")
"""How ``largebatch sweep --tune`` names the study of one cell (``tune.study_name``)."""

PROTOCOL_KEYS = ("target_val_top1", "val_size", "evals_per_epoch")
"""Protocol values that must agree between the studies merged into one table."""


class ReportError(ValueError):
    """Storages that cannot make one report (none given, nothing in them, or protocols that differ)."""


DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "mysql": "mysql-connector-python",
}
"""The pip package of each database driver module SQLAlchemy may ask for (a storage URL's driver)."""

OPTUNA_TABLES = ("studies", "version_info")
"""Tables every Optuna RDB storage has: a SQLite file without them is another program's database."""


def shown_url(url: str) -> str:
    """``url`` for a message: its password, if any, replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def storage_problem(url: str, *, existing: bool) -> str | None:
    """Why ``url`` cannot be used as an Optuna storage, as one line naming it and the fix, or None.

    Checked without changing anything (a SQLite file is opened read-only, no table is created): the
    URL parses, SQLAlchemy knows its database, the database's driver module is installed, and a
    SQLite file is a database holding an Optuna study's tables (or no tables at all). ``existing``:
    the storage must already hold studies (``study-report``); otherwise a missing or empty SQLite file
    is fine (``sweep --tune`` creates the study there). A server is not contacted.
    """
    from sqlalchemy.engine import make_url

    name = shown_url(url)
    examples = "sqlite:///PATH/study.db, postgresql://USER:PASSWORD@HOST/DB or mysql+pymysql://USER:PASSWORD@HOST/DB"
    try:
        parsed = make_url(url)
    except Exception:
        return f"storage {name!r} is not a database URL; give {examples}"
    try:
        dialect = parsed.get_dialect()
    except Exception:
        return f"storage {name}: unknown database {parsed.drivername!r} (no SQLAlchemy dialect); give {examples}"
    try:
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()
    except ImportError as err:
        module = getattr(err, "name", None) or str(err).split("'")[1 if "'" in str(err) else 0]
        package = DRIVER_PACKAGES.get(module, module)
        return (
            f"storage {name}: its database driver {module!r} is not installed; pip install {package!r}, "
            f"or name an installed driver in the URL (e.g. {parsed.get_backend_name()}+DRIVER://...)"
        )
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    path = Path(parsed.database)
    if path.is_dir():
        return f"storage {name}: {path} is a folder; give sqlite:///PATH of a study.db file"
    if not path.exists():
        if existing:
            return f"storage {name}: no such file (give sqlite:///PATH of an existing study.db)"
        ancestor = path.absolute().parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            why = "is not a folder" if not ancestor.is_dir() else "is not writable"
            return f"storage {name}: the study.db cannot be created there ({ancestor} {why}); give another path"
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            connection.close()
    except sqlite3.Error as err:
        return (
            f"storage {name}: {path} is not a readable SQLite database ({err}); give the study.db of "
            f"`largebatch sweep --tune`, or a new path for a new study (the file was not changed)"
        )
    if tables and not all(t in tables for t in OPTUNA_TABLES):
        listed = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
        return (
            f"storage {name}: {path} is a SQLite database of another program (tables {listed}), not an Optuna "
            f"study; give the study.db of `largebatch sweep --tune`, or a new path (the file was not changed)"
        )
    if existing and not tables:
        return f"storage {name}: {path} holds no Optuna study (an empty database); give the study.db of a tuned sweep"
    return None


def _first_line(err: BaseException) -> str:
    """An exception's first line, without SQLAlchemy's '(Background on this error ...)' link."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}"[:300]


@dataclass
class Report:
    """What :func:`write_report` renders: the rows (one per method and global batch), the fits per
    method (steps objective), and the protocol the studies share."""

    objective: str
    rows: list[dict]
    protocol: dict = field(default_factory=dict)
    fits: dict = field(default_factory=dict)
    scaling: dict = field(default_factory=dict)
    storages: list[str] = field(default_factory=list)


def parse_study_name(name: str) -> dict | None:
    """``{"method", "batch", "objective", "epochs"}`` of a tuned cell's study name, or None."""
    m = STUDY_NAME.match(name)
    if not m or m["method"] not in METHODS:
        return None
    return {"method": m["method"], "batch": int(m["batch"]), "objective": m["objective"], "epochs": int(m["epochs"])}


def _finished(study) -> tuple[list, list]:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = [t for t in study.get_trials(deepcopy=False) if t.state in states]
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


EDGE_FRACTION = 0.05
"""A chosen value in the outer 5% of its search range (log scale where it was searched on one) is
flagged: the optimum may lie outside the range (the Deep Learning Tuning Playbook, Godbole et al.
2023, "checking the search space's boundaries")."""


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
    import optuna

    if not storages:
        raise ReportError("give at least one storage URL (e.g. sqlite:///runs/study/study.db)")
    cells: dict[tuple[str, int], list] = {}
    protocol: dict = {}
    for url in storages:  # every storage checked before any is read
        if problem := storage_problem(url, existing=True):
            raise ReportError(problem)
    for url in storages:
        try:
            names = optuna.get_all_study_names(storage=url)
        except Exception as err:  # optuna raises sqlalchemy's and its own errors (server down, old schema)
            raise ReportError(f"storage {shown_url(url)}: cannot be read ({_first_line(err)})") from None
        for name in names:
            cell = parse_study_name(name)
            if cell is None or cell["objective"] != objective:
                continue
            if (epochs is not None and cell["epochs"] != epochs) or (
                study_names is not None and name not in study_names
            ):
                continue
            if (methods and cell["method"] not in methods) or (batch_sizes and cell["batch"] not in batch_sizes):
                continue
            study = optuna.load_study(study_name=name, storage=url)
            recorded = study.user_attrs.get("protocol") or {}
            for key in PROTOCOL_KEYS:
                if key in recorded:
                    if key in protocol and protocol[key] != recorded[key]:
                        raise ReportError(
                            f"study {name} in {url} has {key} {recorded[key]}, another study {protocol[key]}: "
                            "a report merges studies of one protocol; give the storages separately"
                        )
                    protocol[key] = recorded[key]
            cell["storage"] = url
            cells.setdefault((cell["method"], cell["batch"]), []).append((cell, study))
    if not cells:
        raise ReportError(f"no tuned studies of objective {objective!r} in {', '.join(storages)}")

    rows = []
    order = list(methods or METHODS)  # rows in the order asked, else in the order of METHODS
    for (method, batch), studies in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        if objective == "accuracy" and len({c["epochs"] for c, _ in studies}) > 1:
            budgets = sorted(c["epochs"] for c, _ in studies)
            raise ReportError(
                f"{method} at global batch {batch} has studies at {budgets} epochs: equal epochs needs one; "
                "give --epochs"
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
            continue
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
        # counts over every budget of the cell, not only the chosen trial's study
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
        rows.append(row)
    report = Report(objective=objective, rows=rows, protocol=protocol, storages=list(storages))
    if objective == "steps":
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
    return report


def _fmt_params(row: dict) -> str:
    edge = set(row.get("params_at_edge", []))
    text = ", ".join(f"{k} {v:.4g}" + (" (edge)" if k in edge else "") for k, v in row["params"].items())
    return text or "rule: " + " ".join(row["overrides"])


def _minutes(row: dict) -> str:
    """Trial minutes on the study's machine, then those of each other machine apart ("12.5 + 3.1 H200")."""
    text = f"{row['wall_s'] / 60:.1f}"
    for machine, wall_s in sorted(row.get("other_machines_wall_s", {}).items()):
        text += f" + {wall_s / 60:.1f} {machine}"
    return text


def storage_label(url: str) -> str:
    """A short name for a storage in a table: the last two parts of a SQLite file's path
    (``tuned_epochs_e16_wide/study.db``), else the URL without its password."""
    if url.startswith("sqlite:///"):
        return "/".join(Path(url[len("sqlite:///") :]).parts[-2:])
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


def report_markdown(report: Report, *, workers_per_trial: int | None = None) -> str:
    """The table of the best trial per cell, then one line per fit and per scaling region."""
    target = report.protocol.get("target_val_top1")
    head = (
        f"steps to val top-1 {target:g}%" if report.objective == "steps" and target is not None else "steps to target"
    )
    if report.objective == "accuracy":
        epochs = sorted({r["epochs"] for r in report.rows})
        head = f"final val top-1 after {', '.join(map(str, epochs))} epochs"
    val = report.protocol.get("val_size")
    lines = [
        f"Best trial per cell by {head} (validation split {val if val is not None else 'not recorded'} images); "
        "test top-1 of that trial, mean [min, max] when further seeds ran.",
        "",
        "| method | global batch | budget (epochs) | study / trial | hyperparameters | steps to target | "
        "val top-1 | test top-1 | trials (pruned, diverged) | trial minutes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        test = "" if r["test_top1_mean"] is None else f"{r['test_top1_mean']:.2f}"
        if r["seeds"] > 1:
            test += f" [{r['test_top1_min']:.2f}, {r['test_top1_max']:.2f}] ({r['seeds']} seeds)"
        steps = r["steps_to_target"]
        if steps is None:
            steps_text = f"not reached (best val {r['best_val_top1'] or 0:.2f}%)" if report.objective == "steps" else ""
        else:
            steps_text = str(steps)
        further = r.get("seed_steps_to_target", [])[1:]
        if report.objective == "steps" and further:  # the chosen trial's steps again with each further seed
            steps_text += " (further seeds: " + ", ".join(str(x) if x else "not reached" for x in further) + ")"
        where = f" ({r['machine']})" if r.get("machine") else ""
        if r.get("study_name_in_storages", 1) > 1:  # the same study name in several storages: say which
            where += f" in {storage_label(r['storage'])}"
        lines.append(
            f"| {r['method']} | {r['global_batch_size']} | {'/'.join(map(str, r['budgets_epochs']))} | "
            f"{r['study']} / {r['trial']}{where} | {_fmt_params(r)} | {steps_text} | {(r['val_top1'] or 0):.2f} | {test} | "
            f"{r['trials']} ({r['pruned']}, {r['diverged']}) | {_minutes(r)} |"
        )
    if any(r.get("params_at_edge") for r in report.rows):
        lines += [
            "",
            f"(edge): the chosen value lies in the outer {EDGE_FRACTION:.0%} of its search range (log scale where "
            "searched on one); the optimum may lie outside it: widen the range before reading the cell as tuned.",
        ]
    for method, fit in report.fits.items():
        lines.append("")
        if "error" in fit:
            lines.append(f"{method}: no fit of S = S_min (1 + B_noise / B): {fit['error']}")
            continue
        lines.append(
            f"{method}: S = S_min (1 + B_noise / B) over {fit['points']} batch sizes: S_min {fit['s_min']:.1f} "
            f"+- {fit['s_min_se']:.1f} steps, B_noise (critical batch) {fit['b_noise']:.0f} +- "
            f"{fit['b_noise_se']:.0f} images, rms relative residual {fit['rms_relative_residual']:.3f}"
        )
    for method, sc in report.scaling.items():
        region = sc["perfect_scaling_region"]
        lines.append("")
        if sc["batch_sizes_reaching_target"] < 2:
            lines.append(
                f"{method}: {sc['batch_sizes_reaching_target']} batch size(s) reached the target: no doubling to judge"
            )
            continue
        lines.append(
            f"{method}: perfect scaling (steps halving within 20% per doubling) over "
            + (f"{region[0]}-{region[-1]} ({len(region)} batch sizes)" if region else "no doubling")
            + (f"; the bend: {sc['bend_after']} does not halve the steps" if sc["bend_after"] else "")
        )
    return "\n".join(lines) + "\n"


def write_report(report: Report, out: Path) -> list[Path]:
    """``tuned.json``, ``tuned.md`` and the figure (``steps_to_target.png`` or ``equal_epochs.png``)
    in ``out``; returns the paths written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "objective": report.objective,
        "protocol": report.protocol,
        "storages": report.storages,
        "rows": report.rows,
        "fits": report.fits,
        "scaling": report.scaling,
    }
    (out / "tuned.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / "tuned.md").write_text(report_markdown(report))
    figure = out / ("steps_to_target.png" if report.objective == "steps" else "equal_epochs.png")
    plot(report, figure)
    return [out / "tuned.json", out / "tuned.md", figure]


def plot(report: Report, path: Path) -> None:
    """Steps to target against global batch, log-log, with each method's fit and the perfect-scaling
    line (Shallue et al. 2018 Fig. 1); or test error against global batch (Goyal et al. 2017 Fig. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report.rows
    methods = list(dict.fromkeys(r["method"] for r in rows))
    batches = sorted({r["global_batch_size"] for r in rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if report.objective == "steps":
        best: dict[int, float] = {}
        for m in methods:
            pts = sorted((r["global_batch_size"], r["steps_to_target"]) for r in rows if r["method"] == m)
            reached = [(b, s) for b, s in pts if s]
            if not reached:
                continue
            (line,) = ax.plot([b for b, _ in reached], [s for _, s in reached], marker="o", label=METHODS[m].label)
            for b, s in reached:
                best[b] = min(best.get(b, math.inf), s)
            fit = report.fits.get(m, {})
            if "s_min" in fit:
                xs = [batches[0] * (batches[-1] / batches[0]) ** (i / 50) for i in range(51)]
                ax.plot(
                    xs,
                    [fit["s_min"] * (1 + fit["b_noise"] / x) for x in xs],
                    ls=":",
                    color=line.get_color(),
                    label=f"fit: B_noise {fit['b_noise']:.0f} +- {fit['b_noise_se']:.0f}",
                )
        if best:
            b0 = min(best)
            ax.plot(
                batches,
                [best[b0] * b0 / b for b in batches],
                color="gray",
                ls="--",
                lw=1,
                label="perfect scaling (steps x batch constant)",
            )
        ax.set_yscale("log")
        target = report.protocol.get("target_val_top1")
        ax.set_ylabel("steps to val top-1 " + (f"{target:g}%" if target is not None else "target"))
        ax.set_title("Steps to target against global batch (as Shallue et al. 2018, Fig. 1)")
    else:
        for m in methods:
            pts = sorted(
                (r["global_batch_size"], 100 - r["test_top1_mean"])
                for r in rows
                if r["method"] == m and r["test_top1_mean"] is not None
            )
            ax.plot([b for b, _ in pts], [e for _, e in pts], marker="o", label=METHODS[m].label)
        epochs = sorted({r["epochs"] for r in rows})
        ax.set_ylabel(f"test error after {'/'.join(map(str, epochs))} epochs (%), chosen on validation")
        ax.set_title("Error against global batch at equal epochs (as Goyal et al. 2017, Fig. 1)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [f"{b // 1024}k" if b >= 1024 and b % 1024 == 0 else str(b) for b in batches])
    ax.set_xlabel("global batch size (images)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
