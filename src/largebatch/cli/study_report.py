"""``largebatch study-report``: one table and figure from the Optuna storages of tuned sweeps
(:mod:`largebatch.study.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from largebatch.cli.common import add_batch_sizes, add_out
from largebatch.cli.exits import bad_input, exit_statuses
from largebatch.study.report import ReportError, collect, write_report

NAME = "study-report"
HELP = (
    "one table and figure from the Optuna storages of tuned sweeps (budgets, machines and sessions "
    "merged): best trial per cell, the McCandlish et al. fit and the perfect-scaling region"
)
EXAMPLES = [
    "largebatch study-report sqlite:///runs/study_e8/study.db sqlite:///runs/study_long/study.db --out runs/steps",
    "largebatch study-report sqlite:///runs/study_epochs/study.db --objective accuracy --epochs 16 --out runs/e16",
]
EXIT_STATUS = (
    "0 written (table on stdout); 2 bad input (no tuned studies, protocols that differ, a storage that cannot be read)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "storage", nargs="+", help="Optuna storage URLs of `largebatch sweep --tune` (sqlite:///PATH, ...)"
    )
    parser.add_argument(
        "--objective",
        choices=("steps", "accuracy"),
        default="steps",
        help="steps: fewest steps to the validation target over every budget (default); accuracy: "
        "final validation top-1 at equal epochs",
    )
    parser.add_argument("--epochs", type=int, default=None, help="only the studies with this many epochs")
    parser.add_argument("--methods", default="", help="comma-separated methods to keep (default: all)")
    add_batch_sizes(parser, default=[], help="comma-separated global batches to keep")
    add_out(parser, default="runs/study_report", help="folder of tuned.md, tuned.json and the figure")


def run(args: argparse.Namespace) -> int:
    with exit_statuses(
        bad_input(ReportError),
        bad_input(
            OSError,
            message=lambda err: f"--out {args.out}: cannot write there ({err.strerror or err}); give a writable folder",
        ),
    ):
        report = collect(
            args.storage,
            args.objective,
            epochs=args.epochs,
            methods=[m for m in args.methods.split(",") if m] or None,
            batch_sizes=args.batch_sizes or None,
        )
        paths = write_report(report, Path(args.out))
    print(paths[1].read_text())
    print(f"table {paths[1]}, {paths[0]}; figure {paths[2]}")
    return 0
