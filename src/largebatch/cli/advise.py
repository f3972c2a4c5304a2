"""``largebatch advise``: the gradient noise scale measured in a short probe; the critical batch size,
the linear-scaling range, GPUs and time to train (:mod:`largebatch.study.advise`, the cost model of
:mod:`largebatch.sim`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from largebatch.cli.common import add_nproc, add_out, add_recipe, add_set
from largebatch.cli.exits import bad_input, exit_statuses, fail, failed
from largebatch.config import ConfigError
from largebatch.recipes import DEFAULT_RECIPE
from largebatch.sim.allreduce import ALGORITHMS
from largebatch.sim.compute import fit_compute, measured_points
from largebatch.sim.presets import PRESETS

NAME = "advise"
HELP = (
    "measure the gradient noise scale in a short probe; report the critical "
    "batch size, the linear-scaling range, GPUs and time to train"
)
EXAMPLES = ["largebatch advise --recipe goyal2017_fashion_mnist --preset h100_ndr"]
EXIT_STATUS = (
    "0 advised (the report on stdout); 1 the probe failed; 2 bad input, found before the probe starts "
    "(unknown recipe or preset, a probe too short to leave warmup, --out in use)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe(parser, default=DEFAULT_RECIPE, help="recipe to probe")
    add_set(parser)
    _add_probe_arguments(parser)
    add_nproc(parser, default=2, help="worker processes of the probe (default 2; 1 works)")
    _add_estimate_arguments(parser)


def _add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--probe-epochs",
        type=float,
        default=2.0,
        help="length of the probe in epochs (default 2): the recipe's run, its schedule unchanged, stopped "
        "there; it must leave the warmup by two windows of a quarter epoch",
    )
    parser.add_argument(
        "--horizon-epochs",
        type=float,
        default=None,
        help="epoch up to which the prediction averages the noise scale (default: the first LR decay of a step "
        "schedule, else half the run)",
    )
    parser.add_argument(
        "--probe-seeds",
        type=int,
        default=2,
        help="probes of different seeds, pooled; their spread widens the interval (default 2)",
    )
    parser.add_argument(
        "--hessian",
        action="store_true",
        help="also measure the Hessian-corrected noise scale tr(H Sigma) / G^T H G at each probe's final weights "
        "(Hessian-vector products; seconds to minutes) and print the prediction it gives",
    )
    parser.add_argument(
        "--hessian-small-batches",
        type=int,
        default=128,
        help="small batches (one BN group each) behind the Hessian-corrected estimate (default 128)",
    )


def _add_estimate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default="h100_ndr",
        help="cost-model cluster (see `largebatch simulate --help`; default h100_ndr); empty: no estimate",
    )
    parser.add_argument(
        "--algorithm",
        default="auto",
        help="all-reduce of the estimate: auto (what NCCL would run; default), preset (the system's own), "
        "or a name of `largebatch simulate --algorithm`",
    )
    add_out(parser, default=None, help="probe run directory (default runs/advise-<recipe>)")
    parser.add_argument(
        "--measured",
        default=None,
        metavar="CRITICAL_BATCH_JSON",
        help="a report of `largebatch critical-batch`: compare the advice with each measured critical "
        "batch (ratio, and whether within 2x)",
    )
    parser.add_argument(
        "--measured-throughput",
        nargs="+",
        default=None,
        metavar="RUN_DIR|B:IPS,...",
        help="calibrated cost model: your own training throughput of this recipe's model at two or more per-GPU "
        "batches, as `largebatch train` run directories (summary.json) or BATCH:IMAGES_PER_S pairs per GPU; "
        "replaces the preset's compute (the network stays the preset's)",
    )


def run(args: argparse.Namespace) -> int:
    if args.preset and args.preset not in PRESETS:
        return fail(f"--preset {args.preset!r} is unknown; accepted: {', '.join(PRESETS)}, or '' for no estimate")
    if args.algorithm not in (*ALGORITHMS, "preset"):
        return fail(f"--algorithm {args.algorithm!r} is unknown; accepted: {', '.join(ALGORITHMS)}, preset")
    throughput = ()
    if args.measured_throughput:
        with exit_statuses(bad_input(ValueError, message=lambda err: f"--measured-throughput: {err}")):
            throughput = measured_points(args.measured_throughput)
            fit_compute(throughput, "your measurements", mode="calibrated")
    out = args.out or f"runs/advise-{args.recipe}"
    if Path(out).exists() and any(Path(out).iterdir()):
        return fail(f"--out {out} already holds files; give a new directory (nothing was overwritten)")
    # Imported here: study.advise imports torch (seconds), which `largebatch --help`, the other
    # subcommands and the checks above do not wait for.
    from largebatch.study.advise import advise

    with exit_statuses(bad_input(ConfigError, ValueError, KeyError), failed(RuntimeError)):
        result = advise(
            args.recipe,
            args.set,
            out=out,
            probe_epochs=args.probe_epochs,
            nproc=args.nproc,
            preset=args.preset,
            algorithm=args.algorithm,
            measured=args.measured,
            horizon_epochs=args.horizon_epochs,
            probe_seeds=args.probe_seeds,
            hessian_small_batches=args.hessian_small_batches if args.hessian else 0,
            measured_throughput=throughput,
        )
    print(result.text())
    print(f"(probe run and advice.json in {out})")
    return 0
