"""``largebatch train``: a recipe or a config file on local worker processes, or this process as one
torchrun worker. The work is :func:`largebatch.api.prepare_run` and :func:`largebatch.api.launch`;
here the arguments, the lines on stderr and the SIGTERM / SIGINT contract (:mod:`.signals`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from largebatch.api import PreparedRun, launch, load_config, prepare_run
from largebatch.cli.common import add_nproc, add_out, add_recipe, add_set
from largebatch.cli.exits import CommandError, bad_input, exit_statuses, fail
from largebatch.cli.signals import mark_launched, raise_terminated, stop_if_terminated, stopped
from largebatch.config import Config, ConfigError, schedule_warnings, to_dict
from largebatch.errors import DIVERGED_ERRORS, DIVERGED_STATUS_ENV, EXIT_DIVERGED, EXIT_FAILED, EXIT_PREEMPTED
from largebatch.recipes import DEFAULT_RECIPE

NAME = "train"
HELP = "train a recipe (data-parallel)"
DESCRIPTION = (
    "Train a recipe or a config file on local worker processes (or as one torchrun worker). The global "
    "batch is the recipe's whatever the number of processes; every output goes to the run directory."
)
EXAMPLES = [
    "largebatch train                                   # the default recipe on Fashion-MNIST, 2 workers",
    "largebatch train --set train.global_batch_size=2048 --set train.epochs=9 --out runs/b2048",
    "largebatch train --out runs/b2048 --resume auto    # continue a stopped run",
]
EXIT_STATUS = (
    "0 finished; 1 a worker failed (one line here, the traceback in RUN/train.log); 2 bad input, found "
    "before any worker started; 75 stopped by SIGTERM (continue with --resume auto); 130 Ctrl-C"
)
KEEP_SIGTERM_HANDLER = True
"""main()'s SIGTERM handler stays installed: a SIGTERM at any point ends the command with one line and
exit status 75 (docs/reliability.md). The other subcommands get the previous handler back."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recipe(parser, default=None, help=f"recipe name (default {DEFAULT_RECIPE}); see `largebatch recipes`")
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="a YAML or JSON config (what `largebatch recipes NAME` prints, or a run's config.json or "
        "run directory) instead of --recipe; --set applies on top",
    )
    add_set(parser)
    add_nproc(
        parser, default=None, help="local worker processes (default: the recipe's train.nproc); not with torchrun"
    )
    add_out(parser, default=None, help="run directory (default runs/<recipe>-<timestamp>)")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|PATH",
        help="continue from the newest valid checkpoint of the run directory (auto) or from PATH",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        metavar="R",
        help="restart all workers up to R times when one dies (killed, crashed); each restart resumes from "
        "the newest valid checkpoint. An error, SIGTERM or Ctrl-C is never retried",
    )


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None and args.nproc < 1:
        return fail(f"--nproc {args.nproc}: give at least 1 worker process")
    if args.max_restarts < 0:
        return fail(f"--max-restarts {args.max_restarts}: give 0 or more restarts")
    if args.config and args.recipe:
        return fail("--config and --recipe both name the config; give one (--set applies on top of either)")
    stop_if_terminated()
    with exit_statuses(bad_input(ConfigError)):
        cfg = load_config(args.config or args.recipe, args.set)
    stop_if_terminated()
    if _in_torchrun():
        # torchrun started this process: it is one worker; the world size comes from the environment.
        return _run_worker(cfg, args)
    prepared = _prepare(cfg, args)
    # The run directory is fixed here, so an elastic restart of the workers finds its checkpoints.
    return _launch(prepared, args.max_restarts)


def _in_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _preempted(result) -> bool:
    values = result.values() if isinstance(result, dict) and "preempted" not in result else [result]
    return any(isinstance(v, dict) and v.get("preempted") for v in values)


def _failure_status(err) -> int:
    """A failed run's exit status: :data:`~largebatch.errors.EXIT_DIVERGED` for a non-finite stop where
    the environment asks for it (:data:`~largebatch.errors.DIVERGED_STATUS_ENV`, set by the study's
    launcher), else :data:`~largebatch.errors.EXIT_FAILED`."""
    diverged = err.kind == "error" and err.error_type in DIVERGED_ERRORS
    return EXIT_DIVERGED if diverged and os.environ.get(DIVERGED_STATUS_ENV) == "1" else EXIT_FAILED


def _run_worker(cfg: Config, args: argparse.Namespace) -> int:
    """This process as one torchrun worker; it leaves the process itself when the run is over."""
    if args.nproc:
        return fail("--nproc starts local workers itself; under torchrun set --nproc_per_node instead")
    # Imported here, as in _launch: torch's import takes seconds, and `largebatch --help`, `recipes`,
    # `simulate` and the bad-input checks above start without it.
    from torch.distributed.elastic.multiprocessing.errors import record

    from largebatch.train.run import exit_now, run_worker

    rank = int(os.environ.get("RANK", "0"))
    with exit_statuses(bad_input(ConfigError, message=lambda err: str(err) if rank == 0 else None)):
        # record: a failure is written to torchrun's error file, so its summary names the cause.
        result = record(run_worker)(to_dict(cfg), args.out, args.resume)
    # The run is written and the process group destroyed. Leave without the interpreter's teardown:
    # gloo's threads can still hold work objects with tensors then, and freeing them during
    # finalization aborts the process now and then (SIGABRT after a finished run, seen under torchrun
    # on 2026-12-03), which torchrun reports as a failed run. Workers of --nproc leave this way too.
    exit_now(EXIT_PREEMPTED if _preempted(result) else 0)
    return 0  # not reached


def _prepare(cfg: Config, args: argparse.Namespace) -> PreparedRun:
    """Validate, check the data, choose the run directory (api.prepare_run) and say what will run."""
    with exit_statuses(
        bad_input(ConfigError, FileNotFoundError, ImportError),
        bad_input(
            OSError,  # --out under a regular file, on a read-only mount, ...
            message=lambda err: (
                f"--out {args.out or 'runs/'}: cannot use it as the run directory "
                f"({err.strerror or err}); give a writable folder"
            ),
        ),
    ):
        prepared = prepare_run(cfg, nproc=args.nproc, out=args.out, resume=args.resume)
    print(f"largebatch: {cfg.recipe}: {prepared.plan.describe()}; run directory {prepared.run_dir}", file=sys.stderr)
    if args.resume == "auto" and prepared.resume_path is None:
        print(
            f"largebatch: --resume auto found no checkpoint in {prepared.run_dir}; starting from step 0",
            file=sys.stderr,
        )
    for warning in schedule_warnings(cfg):
        print(f"largebatch: warning: {warning}", file=sys.stderr)
    return prepared


def _launch(prepared: PreparedRun, max_restarts: int) -> int:
    """Run the workers; a signal or a preempted worker is reported from what the run left on disk."""
    # Imported here: see _run_worker.
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from largebatch.dist.launch import WorkerFailed

    run_dir = prepared.run_dir
    stop_if_terminated()
    started = time.time()
    mark_launched(run_dir, started)  # from here a signal's message reads the run's state from the disk
    try:
        with exit_statuses(
            bad_input(ConfigError),
            bad_input(
                OSError, message=lambda err: f"run directory {run_dir}: {err.strerror or err}; give a writable --out"
            ),
        ):
            try:
                result = launch(prepared, max_restarts=max_restarts)
            finally:
                signal.signal(signal.SIGTERM, raise_terminated)  # torch's agent leaves its own handler installed
    except WorkerFailed as err:
        if err.kind not in ("preempted", "interrupted"):  # a worker raised or died: exit status 1
            raise CommandError(str(err), _failure_status(err)) from None
        # a worker got SIGTERM (or SIGINT) and left
        return stopped(run_dir, "SIGTERM" if err.kind == "preempted" else "SIGINT", started)
    except SignalException as sig:  # the launcher itself got a signal; it was passed on to the workers
        return stopped(run_dir, sig.sigval.name, started)
    if _preempted(result):
        return stopped(run_dir, result.get("signal", "SIGTERM"), started)
    return 0
