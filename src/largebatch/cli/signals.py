"""SIGTERM and SIGINT at the command line (docs/reliability.md): ``main`` installs
:func:`raise_terminated` first thing, so that a SIGTERM while ``train`` imports torch or reads the
config stops it with one line and exit status 75; once ``train`` has started its workers
(:func:`mark_launched`), the line says where the run stands, read from the disk (:func:`stopped`).
Stdlib only: imported before the handler is installed."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from largebatch.errors import EXIT_PREEMPTED, Terminated

_launched: tuple[Path, float] | None = None
"""(run directory, start time) once ``train`` has started its workers: a signal after that point is
reported from what the run left on disk (:func:`stopped`)."""

_sigterm_seen = False


def reset() -> None:
    """Forget an earlier command's state (``main`` runs once per process, or once per test)."""
    global _launched, _sigterm_seen
    _launched, _sigterm_seen = None, False


def raise_terminated(signum, frame) -> None:
    """The SIGTERM handler of ``main``: raise :class:`Terminated` where the command is."""
    global _sigterm_seen
    _sigterm_seen = True
    raise Terminated


def stop_if_terminated() -> None:
    """Raise :class:`Terminated` for a SIGTERM whose exception was lost: one raised while an import
    compiles a module can vanish (seen on CPython 3.11 in about half of the tries whose signal came
    within a millisecond of the handler's installation). Called between the phases of ``train``."""
    if _sigterm_seen:
        raise Terminated


def exit_with(code: int):
    """A SIGTERM handler for a command that has its exit status: leave with it at once."""

    def handler(signum, frame) -> None:
        print(f"largebatch: SIGTERM arrived as the command was exiting; exit status {code}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)

    return handler


def mark_launched(run_dir: Path, started_unix_s: float) -> None:
    """From here a signal's message reads the run's state from ``run_dir``."""
    global _launched
    _launched = (run_dir, started_unix_s)


def stopped(run_dir: Path, signal_name: str, started_unix_s: float) -> int:
    """Say truthfully where a run stopped by a signal stands, from what is on disk: finished (a
    summary written since ``started_unix_s``: exit 0), or the newest checkpoint and whether this
    command wrote it. Exit status 75 after SIGTERM (the scheduler may start it again, ``--resume
    auto`` continues), 128 + the signal's number otherwise (130 for Ctrl-C)."""
    # Imported here: train.checkpoint imports torch, which the commands other than train never need;
    # train has imported it by the time its workers run. largebatch.summary too: importing the CLI
    # imports nothing beyond the standard library, errors and exits (tests/unit/test_cli_package.py).
    from largebatch.summary import FILE_NAME
    from largebatch.train.checkpoint import list_checkpoints, step_of

    summary = run_dir / FILE_NAME  # RunSummary's file; only its time matters here, not what it says
    if summary.is_file() and summary.stat().st_mtime >= started_unix_s:
        print(f"largebatch: {signal_name} arrived as the run was finishing; it finished ({summary})", file=sys.stderr)
        return 0
    checkpoints = list_checkpoints(run_dir)
    resume = f"continue with --out {run_dir} --resume auto"
    if checkpoints and checkpoints[-1].stat().st_mtime >= started_unix_s:
        what = f"the workers wrote a checkpoint at step {step_of(checkpoints[-1])}: {resume}"
    elif checkpoints:
        what = f"no new checkpoint was written; the newest is at step {step_of(checkpoints[-1])}: {resume}"
    else:
        what = (
            f"before its first checkpoint, so there is nothing to resume: --out {run_dir} --resume auto starts it again"
        )
    print(f"largebatch: stopped by {signal_name}; {what}", file=sys.stderr)
    return EXIT_PREEMPTED if signal_name == "SIGTERM" else 128 + signal.Signals[signal_name].value


def report_stop(sig: BaseException, command: str) -> int:
    """The exit status (and the line) for :class:`Terminated` or ``KeyboardInterrupt`` that reached
    ``main`` while ``command`` ran: where the run stands once it started, else that it stopped."""
    name = "SIGTERM" if isinstance(sig, Terminated) else "SIGINT"
    if _launched is not None:  # the run started: say where it stands
        return stopped(_launched[0], name, _launched[1])
    where = "before the run started; nothing was written" if command == "train" else f"({command} stopped)"
    print(f"largebatch: stopped by {name} {where}", file=sys.stderr)
    return EXIT_PREEMPTED if name == "SIGTERM" else 128 + signal.SIGINT
