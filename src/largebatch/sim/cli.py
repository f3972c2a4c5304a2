"""``largebatch simulate``: the cost model of ``largebatch.sim`` as a table and a figure.

    largebatch simulate --gpus 256 --preset goyal2017 [--algorithm all] [--per-gpu-batch 32]
                        [--epochs 90] [--torus-x 8] [--out FIGURE.png]
                        [--measured RUN_DIR ... | --measured 32:180,64:210] [--alpha-beta A:B]
                        [--gradient-mb MB]

Compute comes from the preset's t(b) = t0 + b / x_max (:mod:`largebatch.sim.compute`), or, in
calibrated mode, from the user's own measurements at two or more per-GPU batches (``--measured``);
the network is the preset's, or one link of the user's fitted alpha and beta for every hop
(``--alpha-beta``, from :func:`largebatch.sim.calibrate.fit_alpha_beta`).

The table goes to stdout; the figure is written only when ``--out`` names a file. Exit status 0,
or 2 for bad input (one line on stderr naming the option and what is accepted, e.g. ``--gpus``
outside 1 to :data:`MAX_GPUS`), checked before anything is computed or written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

from largebatch.sim.allreduce import ALGORITHMS, Network, allreduce_cost
from largebatch.sim.compute import fit_compute, measured_points
from largebatch.sim.presets import PRESETS, get_preset
from largebatch.sim.step import IMAGENET_TRAIN_IMAGES, simulate_step

MAX_GPUS = 10_000_000
"""The largest --gpus accepted: 10 million, far more GPUs than any cluster built (the largest hold a
few hundred thousand); larger counts are typing mistakes, and their times overflow the table."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``simulate`` to ``parser`` (validated in :func:`run`)."""
    parser.add_argument("--gpus", type=int, default=256, help=f"number of GPUs, 1 to {MAX_GPUS:,} (default 256)")
    parser.add_argument("--preset", default="goyal2017", help=f"hardware preset: {', '.join(PRESETS)}")
    parser.add_argument(
        "--algorithm",
        default="all",
        help=f"{' | '.join(ALGORITHMS)} | all (default); auto: what NCCL's tuning model would run",
    )
    parser.add_argument(
        "--per-gpu-batch", type=int, default=None, help="images per GPU per step (default: the preset's, 32)"
    )
    parser.add_argument("--epochs", type=float, default=90.0, help="epochs to train (default 90)")
    parser.add_argument(
        "--images",
        type=int,
        default=IMAGENET_TRAIN_IMAGES,
        help=f"training images per epoch (default {IMAGENET_TRAIN_IMAGES}, ImageNet-1k)",
    )
    parser.add_argument("--torus-x", type=int, default=None, help="2D-torus row length X (default: GPUs per node)")
    parser.add_argument("--out", default=None, help="write the two-panel figure to this file (default: no figure)")
    parser.add_argument(
        "--measured",
        nargs="+",
        default=None,
        metavar="RUN_DIR|B:IPS,...",
        help="calibrated mode: your own training throughput at two or more per-GPU batches, as `largebatch "
        "train` run directories (summary.json) or BATCH:IMAGES_PER_S pairs per GPU (e.g. 32:180,64:210); "
        "replaces the preset's compute",
    )
    parser.add_argument(
        "--alpha-beta",
        default=None,
        metavar="ALPHA_S:BETA_S_PER_BYTE",
        help="your own link (largebatch.sim.calibrate.fit_alpha_beta): every hop costs alpha + bytes x beta; "
        "replaces the preset's network (all GPUs behind that one link type)",
    )
    parser.add_argument(
        "--gradient-mb",
        type=float,
        default=None,
        help="gradient all-reduced per step, MB (default: ResNet-50's at the preset's gradient precision)",
    )


def _options(preset, algorithm: str, torus_x: int | None) -> dict:
    if algorithm == "hierarchical":
        return dict(preset.hierarchical)
    if algorithm == "torus2d" and torus_x is not None:
        return {"x": torus_x}
    return {}


def link_network(text: str, gpus: int) -> Network:
    """A network of one link type for all ``gpus`` (one "node"): every ring or exchange step costs
    ``alpha`` seconds plus bytes x ``beta`` (the model :func:`largebatch.sim.calibrate.fit_alpha_beta`
    fits), from ``"ALPHA_S:BETA_S_PER_BYTE"``.

    Raises:
        ValueError: not two numbers > 0 separated by ':'.
    """
    alpha, sep, beta = text.partition(":")
    try:
        a, b = float(alpha), float(beta)
    except ValueError:
        a = b = float("nan")
    if not (sep and math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise ValueError("accepted: ALPHA_S:BETA_S_PER_BYTE, two numbers > 0 (e.g. 5e-05:2e-10)")
    return Network(
        gpus_per_node=max(1, gpus),
        intra_node_latency_s=a,
        intra_node_bandwidth_bytes_per_s=1 / b,
        inter_node_latency_s=a,
        nic_bandwidth_bytes_per_s=1 / b,
        intra_link="pci",
    )


def _fail(message: str) -> int:
    print(f"largebatch simulate: error: {message}", file=sys.stderr)
    return 2


class _Refused(Exception):
    """Bad input to ``simulate``: its message is the one line printed after ``error:`` (exit 2)."""


def run(args: argparse.Namespace) -> int:
    """Print the table for ``args.gpus`` and write the two-panel figure to ``args.out``."""
    try:
        preset, algorithms = _checked(args)
        work = preset.workload(args.per_gpu_batch, **_workload_changes(args))
        rows = _rows(preset, work, algorithms, args)
    except _Refused as err:
        return _fail(str(err))
    _print_table(preset, work, rows, args)
    if args.out is not None:
        try:
            _figure(preset, work, algorithms, args.gpus, args.torus_x, args.out)
        except OSError as err:
            return _fail(f"--out {args.out}: {err.strerror or err}; give a writable file path")
        print(f"# figure: {args.out}")
    return 0


def _checked(args: argparse.Namespace):
    """The preset (with a measured compute model and your own link swapped in where given) and the
    algorithms to simulate, or :class:`_Refused` naming the first bad argument."""
    try:
        preset = get_preset(args.preset)
    except ValueError as err:
        raise _Refused(f"--preset: {err}") from None
    if args.gpus is None or not 1 <= args.gpus <= MAX_GPUS:
        raise _Refused(
            f"--gpus {args.gpus} is out of range; accepted: 1 to {MAX_GPUS:,} (more GPUs than any cluster built "
            f"by far: a larger count is a typing mistake, and the model is not calibrated there)"
        )
    # your own link is an alpha-beta fit of ring / halving-doubling steps: NCCL's model does not apply to it
    every = ("ring", "halving_doubling") if args.alpha_beta is not None else ALGORITHMS
    algorithms = every if args.algorithm == "all" else (args.algorithm,)
    if args.algorithm != "all" and args.algorithm in ALGORITHMS and args.algorithm not in every:
        raise _Refused(
            f"--algorithm {args.algorithm!r} does not apply to --alpha-beta; accepted: {', '.join(every)}, all"
        )
    if args.algorithm != "all" and args.algorithm not in every:
        raise _Refused(f"--algorithm {args.algorithm!r} is unknown; accepted: {', '.join(every)}, all")
    _check_numbers(args)
    return dataclasses.replace(preset, compute=_compute(preset, args), network=_network(preset, args)), algorithms


def _check_numbers(args: argparse.Namespace) -> None:
    """Refuse out-of-range counts and sizes, and an --out that cannot be written."""
    for name, value in (("--per-gpu-batch", args.per_gpu_batch), ("--torus-x", args.torus_x)):
        if value is not None and value < 1:
            raise _Refused(f"{name} {value} is invalid; accepted: an integer >= 1")
    if not (math.isfinite(args.epochs) and args.epochs > 0):
        raise _Refused(f"--epochs {args.epochs} is invalid; accepted: a finite number > 0")
    if args.images < 1:
        raise _Refused(f"--images {args.images} is invalid; accepted: an integer >= 1")
    if args.out is not None:
        problem = _unwritable(args.out)
        if problem:
            raise _Refused(f"--out {args.out}: {problem}; give a writable file path")


def _compute(preset, args: argparse.Namespace):
    """The preset's compute model, or the one fitted to ``--measured`` (calibrated mode)."""
    if not args.measured:
        return preset.compute
    try:
        return fit_compute(measured_points(args.measured), "measured", mode="calibrated")
    except ValueError as err:
        raise _Refused(f"--measured: {err}") from None


def _network(preset, args: argparse.Namespace):
    """The preset's network, or one link of ``--alpha-beta``'s latency and inverse bandwidth."""
    if args.alpha_beta is None:
        return preset.network
    try:
        return link_network(args.alpha_beta, args.gpus)
    except ValueError as err:
        raise _Refused(f"--alpha-beta {args.alpha_beta}: {err}") from None


def _workload_changes(args: argparse.Namespace) -> dict:
    """``--gradient-mb`` as a change of the preset's workload (bytes), checked."""
    if args.gradient_mb is None:
        return {}
    if not (math.isfinite(args.gradient_mb) and args.gradient_mb > 0):
        raise _Refused(f"--gradient-mb {args.gradient_mb} is invalid; accepted: a number > 0")
    return {"gradient_bytes": args.gradient_mb * 1e6}


def _rows(preset, work, algorithms, args: argparse.Namespace) -> list:
    """One simulated step per algorithm; an algorithm that does not apply is noted when all are asked for."""
    rows = []
    for algorithm in algorithms:
        try:
            rows.append(
                simulate_step(preset.network, work, args.gpus, algorithm, **_options(preset, algorithm, args.torus_x))
            )
        except ValueError as err:
            if algorithm == "torus2d" and args.torus_x is not None:
                raise _Refused(f"--torus-x: {err}") from None
            if args.algorithm != "all":
                raise _Refused(f"--gpus/--algorithm: {err}") from None
            print(f"# {algorithm}: not applicable ({err})")
    return rows


def _print_table(preset, work, rows, args: argparse.Namespace) -> None:
    """The header lines and one row per algorithm."""
    net, compute = preset.network, preset.compute
    print(f"# {preset.name}: {preset.description}")
    print(
        f"# {args.gpus} GPUs ({net.gpus_per_node} per node), {work.per_gpu_batch} images/GPU, "
        f"{compute.images_per_s(work.per_gpu_batch):.0f} img/s/GPU alone, gradient {work.gradient_bytes / 1e6:.1f} MB, "
        f"buckets {len(work.buckets())}, overlap {work.overlap}; the system's own: {preset.algorithm}"
    )
    print(f"# compute, {'calibrated' if args.measured else 'preset'} mode: {compute.describe()}")
    if args.alpha_beta is not None:
        print(
            f"# network: your link, alpha {net.intra_node_latency_s:.3g} s, {net.intra_node_bandwidth_bytes_per_s / 1e9:.3g} GB/s"
        )
    print(
        f"{'algorithm':<18}{'allreduce_ms':>13}{'step_ms':>10}{'exposed_ms':>11}{'epoch_s':>10}{'train_min':>11}"
        f"{'efficiency_%':>14}  nccl_choice"
    )
    for r in rows:  # a space before every number: a value wider than its column never runs into the next
        print(
            f"{r.algorithm:<18} {r.allreduce_s * 1e3:>12.3f} {r.step_s * 1e3:>9.2f} {r.last_bucket_exposed_s * 1e3:>10.3f}"
            f" {r.epoch_s(args.images):>9.2f} {r.train_s(args.epochs, args.images) / 60:>10.2f}"
            f" {r.scaling_efficiency * 100:>13.1f}  {r.choice or '-'}"
        )


def _unwritable(path: str) -> str | None:
    """Why ``path`` cannot be written as a new or replaced file, or None."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return "is a directory"
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder} is not a folder"
    if not os.path.isdir(folder):
        return f"folder {folder} does not exist"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "permission denied"
    return None


def _figure(preset, work, algorithms, gpus: int, torus_x: int | None, out: str) -> None:
    from matplotlib.figure import Figure  # lazy: matplotlib is slow to import; Agg canvas, no pyplot

    top = max(4096, gpus)
    counts = sorted({1 << k for k in range(3, top.bit_length()) if 1 << k <= top} | {gpus})
    fig = Figure(figsize=(11, 4.2))
    ax_time, ax_eff = fig.subplots(1, 2)
    for algorithm in algorithms:
        points = []
        for n in counts:
            try:
                opts = _options(preset, algorithm, torus_x)
                cost = allreduce_cost(algorithm, preset.network, n, work.gradient_bytes, **opts)
                points.append(
                    (
                        n,
                        cost.time_s * 1e3,
                        simulate_step(preset.network, work, n, algorithm, **opts).scaling_efficiency * 100,
                    )
                )
            except ValueError:
                continue  # e.g. a GPU count that the torus shape or the nodes do not divide
        if points:
            ns, times, effs = zip(*points)
            ax_time.plot(ns, times, marker="o", label=algorithm)
            ax_eff.plot(ns, effs, marker="o", label=algorithm)
    for ax, label in ((ax_time, "all-reduce of the gradient (ms)"), (ax_eff, "scaling efficiency (%)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(label)
        ax.axvline(gpus, color="grey", lw=0.8, ls=":")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    ax_time.set_yscale("log")
    fig.suptitle(f"{preset.name}: {work.per_gpu_batch} images/GPU, {work.gradient_bytes / 1e6:.1f} MB gradient")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
