"""The tables and figures of a tuned-sweep report (:class:`Report`, made by
:func:`largebatch.study.report.collect`): ``tuned.md``, ``tuned.json`` and the figure of the objective."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from largebatch.study.methods import METHODS


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


EDGE_FRACTION = 0.05
"""A chosen value in the outer 5% of its search range (log scale where it was searched on one) is
flagged: the optimum may lie outside the range (the Deep Learning Tuning Playbook, Godbole et al.
2023, "checking the search space's boundaries")."""


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
    lines += [_table_line(r, report.objective) for r in report.rows]
    if any(r.get("params_at_edge") for r in report.rows):
        lines += [
            "",
            f"(edge): the chosen value lies in the outer {EDGE_FRACTION:.0%} of its search range (log scale where "
            "searched on one); the optimum may lie outside it: widen the range before reading the cell as tuned.",
        ]
    return "\n".join(lines + _fit_lines(report)) + "\n"


def _table_line(r: dict, objective: str) -> str:
    """One cell's line of the table."""
    test = "" if r["test_top1_mean"] is None else f"{r['test_top1_mean']:.2f}"
    if r["seeds"] > 1:
        test += f" [{r['test_top1_min']:.2f}, {r['test_top1_max']:.2f}] ({r['seeds']} seeds)"
    steps = r["steps_to_target"]
    if steps is None:
        steps_text = f"not reached (best val {r['best_val_top1'] or 0:.2f}%)" if objective == "steps" else ""
    else:
        steps_text = str(steps)
    further = r.get("seed_steps_to_target", [])[1:]
    if objective == "steps" and further:  # the chosen trial's steps again with each further seed
        steps_text += " (further seeds: " + ", ".join(str(x) if x else "not reached" for x in further) + ")"
    where = f" ({r['machine']})" if r.get("machine") else ""
    if r.get("study_name_in_storages", 1) > 1:  # the same study name in several storages: say which
        where += f" in {storage_label(r['storage'])}"
    return (
        f"| {r['method']} | {r['global_batch_size']} | {'/'.join(map(str, r['budgets_epochs']))} | "
        f"{r['study']} / {r['trial']}{where} | {_fmt_params(r)} | {steps_text} | {(r['val_top1'] or 0):.2f} | {test} | "
        f"{r['trials']} ({r['pruned']}, {r['diverged']}) | {_minutes(r)} |"
    )


def _fit_lines(report: Report) -> list[str]:
    """The lines under the table: each method's fit, then each method's perfect-scaling region."""
    lines = []
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
    return lines


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

    batches = sorted({r["global_batch_size"] for r in report.rows})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if report.objective == "steps":
        _plot_steps(ax, report, batches)
    else:
        _plot_errors(ax, report)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [f"{b // 1024}k" if b >= 1024 and b % 1024 == 0 else str(b) for b in batches])
    ax.set_xlabel("global batch size (images)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_steps(ax, report: Report, batches: list[int]) -> None:
    """Each method's steps to target and fit, and the perfect-scaling line from the best smallest batch."""
    rows = report.rows
    best: dict[int, float] = {}
    for m in dict.fromkeys(r["method"] for r in rows):
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


def _plot_errors(ax, report: Report) -> None:
    """Each method's test error of the chosen trial against the global batch, at equal epochs."""
    rows = report.rows
    for m in dict.fromkeys(r["method"] for r in rows):
        pts = sorted(
            (r["global_batch_size"], 100 - r["test_top1_mean"])
            for r in rows
            if r["method"] == m and r["test_top1_mean"] is not None
        )
        ax.plot([b for b, _ in pts], [e for _, e in pts], marker="o", label=METHODS[m].label)
    epochs = sorted({r["epochs"] for r in rows})
    ax.set_ylabel(f"test error after {'/'.join(map(str, epochs))} epochs (%), chosen on validation")
    ax.set_title("Error against global batch at equal epochs (as Goyal et al. 2017, Fig. 1)")
