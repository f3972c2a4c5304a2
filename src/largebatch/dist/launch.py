"""Start N local workers with torch.distributed's elastic launcher (what ``torchrun`` uses).

The rendezvous is c10d on loopback (127.0.0.1, a free port), so a single-machine run opens no port
to the network. On a machine without NVIDIA devices the workers are forked from this process after
it has imported torch, torchvision and the trainer, so they skip the 3-5 s of imports a fresh
interpreter needs (benchmarks/README.md); where CUDA may be used they are spawned (a forked child
cannot use CUDA once a parent touched it). A worker that raises ends the whole group: the agent stops the other workers and
:func:`launch_local` raises :class:`WorkerFailed` with the failing rank's error message.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch
import importlib


class WorkerFailed(RuntimeError):
    """A worker process failed; the message carries its rank and its error."""

    def __init__(self, message: str, exitcode: int | None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


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


def launch_local(entrypoint: Callable[..., Any], args: tuple, *, nproc: int, max_restarts: int = 0,
                 start_method: str = "spawn", preload: tuple[str, ...] = (),
                 log_dir: str | os.PathLike | None = None) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on ``nproc`` local processes with torchrun's environment variables,
    started by ``start_method`` (``spawn``, ``fork`` or ``forkserver``; see :func:`default_start_method`).
    Under ``fork``, the modules named in ``preload`` are imported first, once, in this process.
    ``log_dir``: where the elastic agent keeps its per-attempt folders (error files of failed
    workers); removed afterwards when it holds no file. None: a ``torchelastic_*`` folder in the
    system's temporary folder, as torchrun does.

    Returns:
        {local rank: return value}.

    Raises:
        WorkerFailed: if any worker failed (after ``max_restarts`` restarts of the group).
    """
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"largebatch-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        rdzv_configs={"is_host": True},
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method=start_method,
        local_addr="127.0.0.1",
        logs_specs=DefaultLogsSpecs(log_dir=os.fspath(log_dir)) if log_dir is not None else None,
    )
    if start_method == "fork":
        preload_worker_modules(preload)
    try:
        return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        message = failure.message
        if isinstance(message, dict):  # the error file's content
            message = message.get("message", {}).get("message", str(message)) if isinstance(message.get("message"), dict) \
                else str(message.get("message", message))
        raise WorkerFailed(f"worker rank {rank} failed (exit code {failure.exitcode}): {message}", failure.exitcode) from None
    finally:
        if log_dir is not None and Path(log_dir).is_dir() and not any(p.is_file() for p in Path(log_dir).rglob("*")):
            shutil.rmtree(log_dir, ignore_errors=True)
