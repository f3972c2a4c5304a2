"""Start N local workers with torch.distributed's elastic launcher (what ``torchrun`` uses).

The rendezvous and the workers' bootstrap store listen on 127.0.0.1 only (a rendezvous back-end of
our own, ``largebatch-loopback``, hands torch's TCPStore a socket already bound to loopback: torch's
c10d back-end binds every interface), so a single-machine run opens no port to the network. On a
machine without NVIDIA devices the workers are forked from this process after it has imported torch,
torchvision and the trainer, so they skip the 3-5 s of imports a fresh interpreter needs
(benchmarks/README.md); where CUDA may be used they are spawned (a forked child cannot use CUDA once
a parent touched it).

A worker that fails ends the whole group, and the failure is classified (:func:`classify_failure`):
a worker that *died* (killed by a signal other than SIGTERM/SIGINT, or gone without reporting an
error: OOM kill, segfault, node fault) restarts the group, up to ``max_restarts`` times, from the
newest valid checkpoint (so does a worker whose collective lost a peer that left no error report);
a worker that *raised* (bad data, a non-finite stop, a config error: the
same on every retry) or was *preempted* (SIGTERM: it checkpointed and left with status 75) or
*interrupted* (SIGINT) ends the run at once. The elastic agent's log, tracebacks included, goes to a
file (the run's ``train.log``), not to the terminal.
"""

from __future__ import annotations

import contextlib
import glob
import importlib
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousParameters, dynamic_rendezvous, rendezvous_handler_registry
from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from largebatch.errors import EXIT_PREEMPTED

log = logging.getLogger(__name__)

LOOPBACK_BACKEND = "largebatch-loopback"
"""The rendezvous back-end name of :func:`launch_local`: c10d's, with every store on 127.0.0.1."""

AGENT_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
"""torch's loggers whose records (the agent's failure reports with the workers' tracebacks) go to the
run's log file instead of the terminal during :func:`launch_local`."""


class WorkerFailed(RuntimeError):
    """A worker process failed; the message carries its rank and its error (one line).

    Attributes:
        exitcode: the failed worker's exit status (negative: killed by that signal).
        kind: ``error`` (the worker raised), ``died`` (killed or gone without an error report),
            ``preempted`` (SIGTERM, exit status 75) or ``interrupted`` (SIGINT).
        error_type: the exception's class name when ``kind`` is ``error`` (e.g. ``ConfigError``).
    """

    def __init__(self, message: str, exitcode: int | None, kind: str = "error", error_type: str = "") -> None:
        super().__init__(message)
        self.exitcode, self.kind, self.error_type = exitcode, kind, error_type


@dataclass(frozen=True)
class FailureKind:
    """What ended a worker group: see :func:`classify_failure`."""

    kind: str  # error | died | peer_lost | preempted | interrupted
    rank: int
    failure: ProcessFailure

    @property
    def restartable(self) -> bool:
        return self.kind in ("died", "peer_lost")


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
"""Words of the error a collective raises when another worker's connection went away (gloo's TCP
transport): on its own such an error is a consequence, not a cause."""


def _peer_lost(text: str) -> bool:
    return any(words in text for words in PEER_LOST)


def _other_ranks_errors(failure: ProcessFailure) -> list[ProcessFailure]:
    """The recorded errors of the other workers of the same attempt (their ``error.json`` files beside
    this one's, ``.../attempt_N/<rank>/error.json``): torch reports only the first worker it saw fail."""
    if not _recorded(failure):
        return []
    here = Path(failure.error_file)
    found = []
    for path in sorted(here.parent.parent.glob("*/error.json")):
        if path != here and path.parent.name.isdigit():
            try:
                found.append(ProcessFailure(local_rank=int(path.parent.name), pid=0, exitcode=1, error_file=str(path)))
            except (OSError, ValueError):
                continue
    return found


def _error_text(failure: ProcessFailure) -> tuple[str, str]:
    """(exception type, one-line message) of a worker's recorded error ('' for no record)."""
    message: Any = failure.message
    if isinstance(message, dict):  # the error file's content
        inner = message.get("message", message)
        message = inner.get("message", str(inner)) if isinstance(inner, dict) else inner
    text = str(message).strip()
    error_type = text.split(":", 1)[0] if ":" in text and " " not in text.split(":", 1)[0] else ""
    return error_type, text


def _signal_in(text: str) -> int | None:
    """The signal named in torch's ``SignalException`` message ("... got signal: 2", or ``SIGINT``
    / ``Signals.SIGINT`` on other Python versions)."""
    m = re.search(r"got signal: (?:Signals\.)?(\w+)", text)
    if m is None:
        return None
    name = m.group(1)
    if name.isdigit():
        return int(name)
    return getattr(signal, name, None)


def _recorded(failure: ProcessFailure) -> bool:
    return bool(failure.error_file) and os.path.isfile(failure.error_file)


def classify_failure(failures: dict[int, ProcessFailure]) -> FailureKind:
    """Why a worker group failed, from every failed worker's record.

    * ``preempted``: a worker left with :data:`~largebatch.errors.EXIT_PREEMPTED` (it got SIGTERM
      and checkpointed) or was killed by SIGTERM (before it could handle it: start-up);
    * ``interrupted``: killed by SIGINT (Ctrl-C reaches every process of the terminal);
    * ``died``: killed by another signal (SIGKILL from the OOM killer or a user, SIGSEGV, SIGABRT),
      or gone with a non-zero status but no error report. Nothing says a retry would fail again, so
      these, and only these, are restarted;
    * ``error``: the worker raised an exception (recorded in its error file): bad data, a non-finite
      stop, a config error. A retry would meet it again.

    A death outranks an error: when one worker is killed its peers' next collective fails too, and
    those errors are consequences. torch reports only the first failed worker it sees, which may be
    such a peer: an error that says the peer's connection went away (``peer_lost``, :data:`PEER_LOST`)
    is read against the other workers' error records of the attempt. Another worker's real error
    is the cause (``error``); none means a worker vanished without one, a death (restarted).
    """
    by_kind: dict[str, tuple[int, ProcessFailure]] = {}
    for rank in sorted(failures):
        f = failures[rank]
        error_type, text = _error_text(f) if _recorded(f) else ("", "")
        if error_type in ("SignalException", "KeyboardInterrupt"):  # torch's handler, inherited by a fork
            kind = (
                "interrupted" if error_type == "KeyboardInterrupt" or _signal_in(text) == signal.SIGINT else "preempted"
            )
        elif f.exitcode == EXIT_PREEMPTED or f.exitcode == -signal.SIGTERM:
            kind = "preempted"
        elif f.exitcode in (-signal.SIGINT, 128 + signal.SIGINT):
            kind = "interrupted"
        elif f.exitcode < 0 or not _recorded(f):
            kind = "died"
        elif _peer_lost(text):
            kind = "peer_lost"
        else:
            kind = "error"
        by_kind.setdefault(kind, (rank, f))
    # an interrupt outranks a preemption: the launcher stops the other workers with SIGTERM, and they
    # checkpoint and leave as preempted
    for kind in ("interrupted", "preempted", "died", "error", "peer_lost"):
        if kind in by_kind:
            if kind == "peer_lost":
                for other in _other_ranks_errors(by_kind[kind][1]):
                    if not _peer_lost(_error_text(other)[1]):
                        return FailureKind("error", other.local_rank, other)
            return FailureKind(kind, *by_kind[kind])
    raise ValueError("no failure to classify")


def _describe(fk: FailureKind) -> WorkerFailed:
    f = fk.failure
    if fk.kind == "error":
        error_type, text = _error_text(f)
        return WorkerFailed(
            f"worker rank {fk.rank} failed (exit code {f.exitcode}): {text}", f.exitcode, "error", error_type
        )
    if fk.kind == "peer_lost":
        return WorkerFailed(
            f"worker rank {fk.rank} lost its connection to another worker, which left without an error report "
            f"(killed or crashed): {_error_text(f)[1][:300]}",
            f.exitcode,
            "peer_lost",
        )
    if f.exitcode < 0:
        how = f"was killed by {f.signal_name()}"
    else:
        how = f"left with exit code {f.exitcode}" + ("" if fk.kind == "preempted" else " without an error report")
    return WorkerFailed(f"worker rank {fk.rank} {how}", f.exitcode, fk.kind)


# --- the loopback rendezvous ---------------------------------------------------------------------

_LISTENERS: list[socket.socket] = []  # kept open for the stores' lifetime (the process's)


def loopback_store(timeout_s: float = 60.0) -> dist.TCPStore:
    """A TCPStore server listening on 127.0.0.1 only, on a free port (``store.port``)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    _LISTENERS.append(sock)
    return dist.TCPStore(
        "127.0.0.1",
        sock.getsockname()[1],
        is_master=True,
        multi_tenant=True,
        wait_for_workers=False,
        timeout=timedelta(seconds=timeout_s),
        master_listen_fd=sock.fileno(),
    )


class _LoopbackBackend(C10dRendezvousBackend):
    @property
    def name(self) -> str:
        return LOOPBACK_BACKEND


def _method_name(depth: int = 2) -> str:
    """What torch's ``dynamic_rendezvous.get_method_name`` returns (the name of the function ``depth``
    frames up, for the rendezvous's event records), without ``inspect.stack()``: that reads the
    source lines of every frame of the stack, twice per event, 0.2-0.26 s per call with torch
    imported on the 2-core VM, about 2 s of every launch (9 events)."""
    try:
        return sys._getframe(depth).f_code.co_name
    except ValueError:
        return "no_method_name"


def _loopback_handler(params: RendezvousParameters):
    dynamic_rendezvous.get_method_name = _method_name
    store = loopback_store(float(params.get_as_int("read_timeout", 60) or 60))
    handler = create_handler(store, _LoopbackBackend(store, params.run_id), params)
    # the workers' bootstrap store (MASTER_ADDR:MASTER_PORT), which the handler creates after the
    # rendezvous: on loopback too (torch 2.14's DynamicRendezvousHandler._create_tcp_store_server)
    handler._create_tcp_store_server = lambda addr, port: loopback_store()
    return handler


rendezvous_handler_registry.register(LOOPBACK_BACKEND, _loopback_handler)


# --- launching -----------------------------------------------------------------------------------


def default_start_method(device: str) -> str:
    """``fork`` for CPU runs on Linux (``train.device=cpu``, or ``auto`` on a machine without
    /dev/nvidia* devices), ``spawn`` otherwise. ``LARGEBATCH_START_METHOD`` (fork, spawn or
    forkserver) overrides it."""
    forced = os.environ.get("LARGEBATCH_START_METHOD", "")
    if forced in ("fork", "spawn", "forkserver"):
        return forced
    if not hasattr(os, "fork"):
        return "spawn"
    cpu_only = device == "cpu" or (device == "auto" and not glob.glob("/dev/nvidia[0-9]*"))
    return "fork" if cpu_only else "spawn"


def preload_worker_modules(modules: tuple[str, ...] = ()) -> None:
    """Import what every worker needs (torch, torchvision and ``modules``, e.g. the trainer) in this
    process, before the workers are forked from it; runs no torch operation, so no thread pool is
    forked."""

    import torchvision  # noqa: F401

    for name in modules:
        importlib.import_module(name)


@contextlib.contextmanager
def agent_log_to(path: str | os.PathLike | None) -> Iterator[None]:
    """Send torch's elastic-agent log records to the file ``path`` (appended) instead of the terminal
    while inside; None: leave them where they are."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s [launcher] %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in AGENT_LOGGERS]
    saved = [(lg.propagate, lg.handlers[:]) for lg in loggers]
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    try:
        yield
    finally:
        for lg, (propagate, handlers) in zip(loggers, saved):
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()


@contextlib.contextmanager
def _temp_dir_under(folder: Path | None) -> Iterator[None]:
    """Python's temporary folder set to ``folder`` (created, removed afterwards) while inside: torch's
    multiprocessing leaves a ``pytorch-errorfile-*.pickle`` per failed worker there."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, os.fspath(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def _loopback_config(nproc: int, start_method: str, logs: Path | None) -> LaunchConfig:
    """One attempt's launch on this machine: a fresh run id, the loopback rendezvous, no restarts of
    its own (:func:`launch_local` decides those), the elastic agent's logs under ``logs``."""
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"largebatch-{uuid.uuid4().hex[:8]}",
        rdzv_backend=LOOPBACK_BACKEND,
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=start_method,
        local_addr="127.0.0.1",
        logs_specs=DefaultLogsSpecs(log_dir=os.fspath(logs)) if logs is not None else None,
    )


def launch_local(
    entrypoint: Callable[..., Any],
    args: tuple | Callable[[int], tuple],
    *,
    nproc: int,
    max_restarts: int = 0,
    start_method: str = "spawn",
    preload: tuple[str, ...] = (),
    log_dir: str | os.PathLike | None = None,
    log_file: str | os.PathLike | None = None,
) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on ``nproc`` local processes with torchrun's environment variables,
    started by ``start_method`` (``spawn``, ``fork`` or ``forkserver``; see :func:`default_start_method`).

    Args:
        args: the arguments, or a callable giving them for attempt ``k`` (0 first, then one per
            restart: a restart usually resumes from a checkpoint).
        max_restarts: start the group again up to this many times when a worker *died*
            (:func:`classify_failure`); an error, a preemption or an interrupt is never retried.
        preload: modules imported once in this process before forking (``fork`` only).
        log_dir: where the elastic agent keeps its per-attempt folders (error files of failed
            workers) and torch's per-worker error pickles; removed afterwards when it holds no file.
            None: the system's temporary folder, as torchrun does.
        log_file: the file that receives the agent's log (failure reports, tracebacks); None: the
            terminal.

    Returns:
        {local rank: return value}.

    Raises:
        WorkerFailed: a worker failed (after ``max_restarts`` restarts for deaths); its ``kind`` says how.
    """
    if start_method == "fork":
        preload_worker_modules(preload)
    logs = Path(log_dir) if log_dir is not None else None
    try:
        for attempt in range(max_restarts + 1):
            config = _loopback_config(nproc, start_method, logs)
            attempt_args = args(attempt) if callable(args) else args
            try:
                with agent_log_to(log_file), _temp_dir_under(logs / "tmp" if logs is not None else None):
                    return elastic_launch(config, entrypoint)(*attempt_args)
            except ChildFailedError as err:
                failure = classify_failure(err.failures)
                if not failure.restartable or attempt == max_restarts:
                    raise _describe(failure) from None
                log.warning(
                    "%s; restarting the %d workers (restart %d of %d)",
                    _describe(failure),
                    nproc,
                    attempt + 1,
                    max_restarts,
                )
        raise AssertionError("unreachable")
    finally:
        if logs is not None and logs.is_dir() and not any(p.is_file() for p in logs.rglob("*")):
            shutil.rmtree(logs, ignore_errors=True)
