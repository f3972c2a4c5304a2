"""``largebatch critical-batch RUN``: the critical batch size measured by branching short runs at
several batch sizes from checkpoints of a run (Merrill et al. 2025; :mod:`largebatch.study.branch`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from largebatch.cli.common import add_batch_sizes, add_nproc, add_out, add_set, add_trust_plugins, float_list, int_list
from largebatch.cli.exits import bad_input, exit_statuses, failed
from largebatch.config import ConfigError

NAME = "critical-batch"
HELP = (
    "measure the critical batch size by branching short runs at several "
    "batch sizes from checkpoints of a run (Merrill et al. 2025)"
)
EXAMPLES = ["largebatch critical-batch runs/b512 --batch-sizes 128,512,2048"]
EXIT_STATUS = "0 measured (the report on stdout); 1 a branch failed; 2 bad input"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory of the reference run (its checkpoints/ and metrics.jsonl)")
    parser.add_argument(
        "--steps",
        type=int_list,
        default=None,
        help="comma-separated checkpoint steps to branch from (default: every checkpoint of the run)",
    )
    add_batch_sizes(
        parser,
        default=[128, 256, 512, 1024, 2048, 4096],
        help="comma-separated global batch sizes of the branches (default 128,...,4096)",
    )
    _add_budget_arguments(parser)
    _add_grid_arguments(parser)
    add_nproc(parser, default=1, help="worker processes per branch (default 1)")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="branches run side by side, the CPU cores shared out among them (default 1); on a small model "
        "2 one-thread branches use 2 cores better than one two-thread branch",
    )
    add_set(parser, help="override a key in every branch")
    add_trust_plugins(parser)
    add_out(parser, default=None, help="study directory (default RUN/critical_batch); finished branches there are kept")


def _add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget-images",
        type=int,
        default=32768,
        help="training images of the longest branch, the same at every batch; each batch also runs 1/2, 1/4 "
        "and 1/8 of it, every branch decaying its LR linearly to 0 over its own images (default 32768)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.2,
        help="tolerance-based critical batch: the largest batch needing at most 1 + tolerance times the "
        "smallest batch's images to the middle loss level (default 0.2)",
    )
    parser.add_argument(
        "--min-reduction",
        type=float,
        default=0.05,
        help="validation loss reduction (nats) the smallest batch must reach at the full budget; below it the "
        "budget is doubled (at most --max-doublings times), then the point is reported as not resolved "
        "(default 0.05, about 7x the seed-to-seed spread of a branch's final loss with precise BN on "
        "5,000 images, 0.007 nats)",
    )
    parser.add_argument("--max-doublings", type=int, default=2, help="budget doublings per point (default 2)")


def _add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-widenings", type=int, default=2, help="widenings of the LR grid per batch at a winning edge (default 2)"
    )
    parser.add_argument(
        "--lr-multipliers",
        type=float_list,
        default=[0.25, 0.5, 1.0, 2.0],
        help="multiples of the linear rule's LR tried at every batch, besides the reference's own LR; widened "
        "by 2x at an edge that wins (default 0.25,0.5,1,2)",
    )
    parser.add_argument(
        "--seeds",
        type=int_list,
        default=[0, 1],
        help="seeds: the first runs the LR grid (at half the budget), every seed runs every budget at its "
        "best LR (default 0,1)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: study.branch imports torch (seconds), which `largebatch --help` and the other
    # subcommands' start must not wait for.
    from largebatch.study.branch import BranchError, report_text, run_branches

    with exit_statuses(bad_input(BranchError, ConfigError), failed(RuntimeError)):
        report = run_branches(
            Path(args.run),
            Path(args.out or Path(args.run) / "critical_batch"),
            steps=args.steps,
            batch_sizes=args.batch_sizes,
            budget_images=args.budget_images,
            tolerance=args.tolerance,
            min_reduction=args.min_reduction,
            nproc=args.nproc,
            overrides=args.set,
            trust_plugins=args.trust_plugins,
            lr_multipliers=tuple(args.lr_multipliers),
            seeds=tuple(args.seeds),
            max_doublings=args.max_doublings,
            max_widenings=args.max_widenings,
            parallel=args.parallel,
        )
    print(report_text(report))
    return 0
