"""Start N local workers with torch.distributed's elastic launcher (what ``torchrun`` uses).

The rendezvous is c10d on loopback (127.0.0.1, a free port), so a single-machine run opens no port
to the network. A worker that raises ends the whole group: the agent stops the other workers and
:func:`launch_local` raises :class:`WorkerFailed` with the failing rank's error message.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch


class WorkerFailed(RuntimeError):
    """A worker process failed; the message carries its rank and its error."""

    def __init__(self, message: str, exitcode: int | None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


def launch_local(entrypoint: Callable[..., Any], args: tuple, *, nproc: int, max_restarts: int = 0) -> dict[int, Any]:
    """Run ``entrypoint(*args)`` on ``nproc`` local processes with torchrun's environment variables.

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
        start_method="spawn",
        local_addr="127.0.0.1",
    )
    try:
        return elastic_launch(config, entrypoint)(*args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        message = failure.message
        if isinstance(message, dict):  # the error file's content
            message = message.get("message", {}).get("message", str(message)) if isinstance(message.get("message"), dict) \
                else str(message.get("message", message))
        raise WorkerFailed(f"worker rank {rank} failed (exit code {failure.exitcode}): {message}", failure.exitcode) from None
