"""One ``largebatch train`` run of the study, started as a subprocess and read back: the sweep's runs,
the tuned sweep's trials, the critical-batch branches and the ``advise`` probe all start here.

The run's config is written to its run directory (:data:`CONFIG_FILE`, :func:`largebatch.config.to_dict`
as JSON) and run as ``python -m largebatch train --config FILE --out RUN_DIR --nproc N``, with
``--resume auto`` when the run directory already holds a checkpoint (a stopped run continues). Given
``recipe``, the file's top-level ``recipe``, ``description`` and ``source`` are that recipe's, as when
earlier versions passed ``--recipe NAME`` and every key of every section as ``--set``: the run's
config, its hash and so its identity are the same, and run directories of either version resume
under the other.

The process runs in a session of its own with ``PYTHONUNBUFFERED=1``, its output going to a log file
(without one, its stderr is kept for the error message and its stdout dropped). An exception while
waiting for it (Ctrl-C, the tuned sweep's SIGTERM handler, an error) stops it with SIGTERM to its
process group: the workers checkpoint and leave (exit status 75, ``--resume auto`` continues); what
still runs after :data:`STOP_GRACE_S` seconds gets SIGKILL.

A run that ends with exit status 0 returns its :class:`~largebatch.summary.RunSummary`. With
``report_divergence``, the run is asked (:data:`largebatch.errors.DIVERGED_STATUS_ENV`) to exit with
:data:`largebatch.errors.EXIT_DIVERGED` when its loss or gradients became non-finite, and that status
returns ``RunSummary(diverged=True, log=...)``; any other status raises :class:`RunFailed`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from largebatch.config import to_dict
from largebatch.errors import DIVERGED_STATUS_ENV, EXIT_DIVERGED
from largebatch.recipes import get_recipe
from largebatch.summary import RunSummary, read_summary

CONFIG_FILE = "launch_config.json"
"""The config a run was launched with, in its run directory (what ``--config`` reads)."""
POLL_S = 0.25
"""How often a waiting launcher looks at its run (and calls ``every``)."""
STOP_GRACE_S = 60
"""Seconds a stopped run's processes get to checkpoint and leave after SIGTERM, before SIGKILL."""


class RunFailed(RuntimeError):
    """A run that ended with a non-zero exit status (other than a reported divergence), or with 0
    but without its ``summary.json``.

    Attributes:
        run_dir: the run directory.
        returncode: the command's exit status.
        log: the log file, or None where the run's stderr was kept instead.
        output: the log's text, or the run's stderr (for the message).
    """

    def __init__(self, run_dir: Path, returncode: int, output: str, log: Path | None) -> None:
        why = "exited 0 without summary.json" if returncode == 0 else f"failed (exit {returncode})"
        super().__init__(f"{run_dir} {why}" + (f"; log {log}" if log else ""))
        self.run_dir, self.returncode, self.output, self.log = run_dir, returncode, output, log


def launch_config(cfg, recipe: str | None = None) -> dict:
    """The dict written to :data:`CONFIG_FILE`: ``cfg`` with, given ``recipe``, that recipe's
    top-level keys (its name, description and source), as ``--recipe NAME --set ...`` made them."""
    data = to_dict(cfg)
    if recipe is not None:
        named = get_recipe(recipe)
        data.update(recipe=named.recipe, description=named.description, source=named.source)
    return data


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint file (a run stopped part way, which ``--resume auto``
    continues)."""
    return any((Path(run_dir) / "checkpoints").glob("*.pt"))


class TrainProcess:
    """A started ``largebatch train`` (see the module docstring); :func:`start_train` makes one."""

    def __init__(self, proc, run_dir: Path, log: Path | None, stderr_file, report_divergence: bool) -> None:
        self.proc, self.run_dir, self.log = proc, run_dir, log
        self._stderr, self._report_divergence = stderr_file, report_divergence

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        """The exit status, or None while the run goes on."""
        return self.proc.poll()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the launching process only (SIGTERM: it checkpoints at the next step and exits 75)."""
        self.proc.send_signal(sig)

    def wait(self, every: Callable[[], None] | None = None) -> int:
        """Wait for the run to end, calling ``every()`` every :data:`POLL_S` seconds and once after it
        ended; returns its exit status. Any exception meanwhile (Ctrl-C included) stops the run
        (:func:`stop`) and passes on."""
        try:
            while True:
                try:
                    self.proc.wait(timeout=POLL_S)
                    finished = True
                except subprocess.TimeoutExpired:
                    finished = False
                if every is not None:
                    every()
                if finished:
                    return self.proc.returncode
        except BaseException:
            stop([self])
            raise

    def output(self) -> str:
        """The run's log (or its stderr, where it has no log) as text."""
        if self.log is not None:
            return self.log.read_text()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def outcome(self) -> RunSummary:
        """The ended run's summary (``diverged`` set for a reported divergence).

        Raises:
            RunFailed: any other non-zero exit status, or none but no ``summary.json``.
        """
        code = self.proc.returncode
        if code == EXIT_DIVERGED and self._report_divergence:
            return RunSummary(diverged=True, log=str(self.log) if self.log else None)
        summary = read_summary(self.run_dir) if code == 0 else None
        if summary is None:
            raise RunFailed(self.run_dir, code, self.output(), self.log)
        return summary


def start_train(
    cfg,
    run_dir: str | Path,
    *,
    nproc: int,
    log: str | Path | None = None,
    append: bool = False,
    recipe: str | None = None,
    resume: bool = True,
    report_divergence: bool = False,
    threads_per_worker: int | None = None,
) -> TrainProcess:
    """Start ``largebatch train`` of ``cfg`` into ``run_dir`` on ``nproc`` workers.

    Args:
        log: the file its stdout and stderr go to (``append``: added to, else written anew); None:
            stdout dropped, stderr kept for :meth:`TrainProcess.output`.
        recipe: the recipe whose top-level keys the config takes (:func:`launch_config`).
        resume: ``--resume auto`` when ``run_dir`` holds a checkpoint (:func:`has_checkpoint`).
        report_divergence: a non-finite stop returns a diverged summary instead of failing.
        threads_per_worker: ``train.threads_per_worker`` for this run (runs side by side share the cores).
    """
    run_dir = Path(run_dir)
    if threads_per_worker is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads_per_worker=threads_per_worker))
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / CONFIG_FILE
    config_file.write_text(json.dumps(launch_config(cfg, recipe), indent=1) + "\n")
    cmd = [sys.executable, "-m", "largebatch", "train", "--nproc", str(nproc), "--out", str(run_dir)]
    cmd += ["--config", str(config_file)]
    if resume and has_checkpoint(run_dir):
        cmd += ["--resume", "auto"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if report_divergence:
        env[DIVERGED_STATUS_ENV] = "1"
    log = Path(log) if log is not None else None
    stderr_file = None
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a" if append else "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    else:
        stderr_file = tempfile.TemporaryFile()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr_file, start_new_session=True, env=env)
    return TrainProcess(proc, run_dir, log, stderr_file, report_divergence)


def run_train(cfg, run_dir: str | Path, *, every: Callable[[], None] | None = None, **options) -> RunSummary:
    """Run ``largebatch train`` of ``cfg`` into ``run_dir`` to its end (:func:`start_train`'s
    options; ``every`` as :meth:`TrainProcess.wait`) and return its summary.

    Raises:
        RunFailed: the run failed (see :meth:`TrainProcess.outcome`).
    """
    process = start_train(cfg, run_dir, **options)
    process.wait(every)
    return process.outcome()


def stop(processes: Iterable[TrainProcess]) -> None:
    """Stop the runs still going: SIGTERM to each one's process group (its workers checkpoint and
    leave), then SIGKILL to those still running :data:`STOP_GRACE_S` seconds later."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in running:
        try:
            p.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.proc.wait()


def _signal_group(p: TrainProcess, sig: int) -> None:
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is not None:
            killpg(p.proc.pid, sig)
        else:  # no process groups: the launching process passes the signal on to its workers
            p.proc.send_signal(sig)
    except ProcessLookupError:  # it left meanwhile
        pass
