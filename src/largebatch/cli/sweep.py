"""``largebatch sweep [--tune]``: accuracy against global batch size for several large-batch methods
(:mod:`largebatch.study.sweep`), or every (method, batch) cell tuned with Optuna
(:mod:`largebatch.study.tune`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from largebatch.cli.common import add_batch_sizes, add_nproc, add_out, add_set, int_list
from largebatch.cli.exits import bad_input, exit_statuses, failed
from largebatch.config import ConfigError
from largebatch.errors import EXIT_PREEMPTED
from largebatch.study.sweep import SweepError, run_sweep
from largebatch.study.tune import TuneSpec, run_tuned_sweep

NAME = "sweep"
HELP = (
    "accuracy against global batch size for several large-batch methods (Goyal et al. 2017, Fig. 1); table and figure"
)
EXAMPLES = [
    "largebatch sweep --methods goyal,lars --batch-sizes 512,2048 --epochs 4 --set data.train_subset=16384",
    "largebatch sweep --tune --methods goyal,nesterov --batch-sizes 256,1024 --epochs 2 --trials 3",
]
EXIT_STATUS = (
    "0 finished (table and figure); 1 a run failed; 2 bad input; 75 interrupted (--tune: the same "
    "command continues the study)"
)
EXIT_RULES = (bad_input(SweepError, ConfigError, KeyError), failed(RuntimeError))
"""How the sweep's exceptions end the command (cli/exits.py)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default="no_scaling,linear_no_warmup,goyal,lars,lamb,akiba,mikami",
        help="comma-separated: no_scaling, linear_no_warmup, goyal, nesterov, lars, lamb, akiba, mikami",
    )
    add_batch_sizes(
        parser,
        default=[128, 256, 512, 1024, 2048, 4096, 8192, 16384],
        help="comma-separated global batch sizes (default 128,...,16384)",
    )
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds (default 0)")
    parser.add_argument(
        "--epochs", type=int, default=4, help="epochs of every run (default 4); schedules are scaled to it"
    )
    add_nproc(parser, default=1, help="worker processes per run (default 1)")
    add_set(parser, help="override a config key in every run, e.g. --set data.train_subset=16384")
    add_out(
        parser, default="runs/sweep", help="sweep directory; runs already finished there are kept (default runs/sweep)"
    )
    group = parser.add_argument_group(
        "tuning (--tune): every (method, batch) searched on a validation split with Optuna"
    )
    _add_tuning_arguments(group)
    _add_search_arguments(group)


def _add_tuning_arguments(group) -> None:
    group.add_argument(
        "--tune",
        action="store_true",
        help="tune each cell instead of running the recipes as written; "
        "--seeds beyond the first re-run each cell's chosen trial",
    )
    group.add_argument("--trials", type=int, default=8, help="finished trials per tuned cell (default 8)")
    group.add_argument(
        "--objective",
        default="steps",
        choices=["steps", "accuracy"],
        help="steps: fewest steps to --target-val-top1, trials stop there (Shallue et al. 2018); "
        "accuracy: validation top-1 after --epochs (equal epochs). Default steps",
    )
    group.add_argument(
        "--target-val-top1",
        type=float,
        default=90.0,
        help="validation top-1 target in percent (default 90: Shallue et al.'s 0.10 error on Fashion-MNIST)",
    )
    group.add_argument("--val-size", type=int, default=5000, help="images held out of the training set (default 5000)")
    group.add_argument(
        "--evals-per-epoch",
        type=int,
        default=4,
        help="validation evaluations per epoch: the resolution of steps to target (default 4)",
    )
    group.add_argument(
        "--pruner",
        default="median",
        choices=["median", "halving", "none"],
        help="early stopping of trials that fall behind (default median)",
    )


def _add_search_arguments(group) -> None:
    group.add_argument(
        "--epochs-at",
        type=_batch_epochs,
        default=[],
        metavar="B=E,...",
        help="epochs at given global batches instead of --epochs, e.g. 4096=16,8192=32 (larger batches "
        "need more epochs to reach the target)",
    )
    group.add_argument(
        "--search-budget",
        action="store_true",
        help="also search each trial's length in epochs (1/8 of the cell's epochs to all of them, the "
        "schedule scaled to it), as Shallue et al. retune the decay schedule; with --objective steps",
    )
    group.add_argument(
        "--search-range",
        type=_search_range,
        action="append",
        default=[],
        metavar="NAME=LOW,HIGH",
        help="replace a searched parameter's range in every method's space, on its own scale, e.g. "
        "base_lr=0.001,1 (LR per 256 images) or one_minus_momentum=0.001,0.2; repeatable. A study keeps "
        "its ranges: new ones need a new --storage",
    )
    group.add_argument(
        "--storage",
        default="",
        help="Optuna storage URL (default sqlite:///OUT/study.db); a PostgreSQL or MySQL URL shared by "
        "several machines runs one study on all of them",
    )


def _search_range(text: str) -> tuple[str, float, float]:
    """``NAME=LOW,HIGH`` of --search-range."""
    try:
        name, bounds = text.split("=")
        low, high = (float(x) for x in bounds.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=LOW,HIGH (e.g. base_lr=0.001,1)") from None
    if not 0 <= low < high:
        raise argparse.ArgumentTypeError(f"{text!r}: give 0 <= LOW < HIGH (e.g. base_lr=0.001,1)")
    return name.strip(), low, high


def _batch_epochs(text: str) -> list[tuple[int, int]]:
    """``B=E,B=E`` pairs of --epochs-at."""
    try:
        pairs = [item.split("=") for item in text.split(",") if item]
        return [(int(b), int(e)) for b, e in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not B=E,... (e.g. 4096=16,8192=32)") from None


def run(args: argparse.Namespace) -> int:
    methods = [m for m in args.methods.split(",") if m]
    if args.tune:
        return _run_tuned(args, methods)
    with exit_statuses(*EXIT_RULES):
        rows = run_sweep(args.out, methods, args.batch_sizes, args.seeds, args.epochs, args.set, args.nproc)
    out = Path(args.out)
    print((out / "sweep.md").read_text() if rows else "no finished runs")
    print(f"table {out / 'sweep.md'}, {out / 'sweep.csv'}; figure {out / 'sweep.png'}")
    return 0


def _run_tuned(args: argparse.Namespace, methods: list[str]) -> int:
    spec = TuneSpec(
        out=Path(args.out),
        methods=methods,
        batch_sizes=args.batch_sizes,
        epochs=args.epochs,
        trials=args.trials,
        objective=args.objective,
        target_val_top1=args.target_val_top1,
        val_size=args.val_size,
        evals_per_epoch=args.evals_per_epoch,
        pruner=args.pruner,
        storage=args.storage,
        seeds=tuple(args.seeds),
        overrides=tuple(args.set),
        nproc=args.nproc,
        epochs_at=tuple(args.epochs_at),
        search_budget=args.search_budget,
        search_ranges=tuple(args.search_range),
    )
    try:
        with exit_statuses(*EXIT_RULES):
            run_tuned_sweep(spec)
    except KeyboardInterrupt:  # the study continues where it stopped: not an error
        print(
            f"largebatch sweep: interrupted; the running trial checkpointed. The same command continues the "
            f"study from {spec.storage_url}",
            file=sys.stderr,
        )
        return EXIT_PREEMPTED
    out = Path(args.out)
    print((out / "tuned.md").read_text())
    figure = "steps_to_target.png" if args.objective == "steps" else "equal_epochs.png"
    print(f"table {out / 'tuned.md'}, {out / 'tuned.json'}; figure {out / figure}; study {spec.storage_url}")
    return 0
