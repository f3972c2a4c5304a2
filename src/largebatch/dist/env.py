"""The distributed boundary: torchrun environment -> process group, device, logging, shutdown.

All other modules ask this one for the rank, the world size and the device. A run started without
torchrun's variables (``RANK``, ``WORLD_SIZE``, ...) is a single process and needs no process group.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

log = logging.getLogger(__name__)

# tqdm's default write lock holds a multiprocessing RLock: one semaphore shared by every process
# forked after it was made (the launcher's workers, a sweep's trials, critical-batch's branches). A
# process killed while writing a log line leaves it held, and every other process then blocks for
# good on its next line (a futex wait). Only rank 0 draws a bar, so a lock of this process's own is
# enough.
tqdm.set_lock(threading.RLock())


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: ranks from torchrun's variables, the device and the backend."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device
    backend: str | None
    """``nccl`` on CUDA, ``gloo`` on CPU, None for a single process without a group."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _pick_device(kind: str, local_rank: int) -> torch.device:
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but CUDA is not available; use train.device=cpu or auto")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _attempt_store(rank: int, world_size: int, timeout_s: float):
    """Under torch.distributed.elastic, the rendezvous store with a prefix of the restart attempt.

    After an elastic restart the agent's store still holds the previous attempt's keys (the gloo
    listening addresses of the dead workers); a new worker that reads one before its peer rewrites it
    connects to a dead port and times out. A per-attempt prefix makes every attempt's keys its own.
    Returns None outside torchelastic (then ``env://`` is used as usual).
    """
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        return None
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world_size,
        is_master=(rank == 0 and not agent_hosts),
        timeout=timedelta(seconds=timeout_s),
    )
    return dist.PrefixStore(f"largebatch/attempt_{attempt}/", store)


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX_BYTES = 32 << 20
"""glibc's largest mmap threshold on 64-bit builds (``DEFAULT_MMAP_THRESHOLD_MAX``)."""


def keep_freed_memory(cache_mib: int) -> bool:
    """Make glibc's malloc keep freed memory in the process for the next allocation.

    By default glibc serves every allocation above its mmap threshold (128 KiB, raised as such
    blocks are freed) with a fresh ``mmap`` and gives the top of the heap back to the kernel once
    more than twice that threshold is free. A CPU training step allocates and frees the same
    activation and gradient tensors every step (0.1-3 MiB each for the main job's network), so
    until the thresholds have grown past them each step maps the same memory again: 7,600 page
    faults per step of 256 images, a quarter of the step time (docs/performance.md). This raises
    the mmap threshold to 32 MiB (glibc's maximum on 64-bit) and the trim threshold to
    ``cache_mib``, the most free memory the heap keeps. Settings are per process and inherited by
    forked workers.

    Args:
        cache_mib: MiB of free heap the process may keep (``train.malloc_cache_mib``); 0 does nothing.

    Returns:
        True when both settings were applied; False for 0, or where the C library is not glibc
        (musl, macOS, Windows), which have no ``mallopt`` or ignore these parameters.
    """
    if cache_mib <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    trim = min(cache_mib << 20, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def setup(
    device: str = "auto",
    *,
    threads_per_worker: int = 0,
    timeout_s: float = 1800.0,
    malloc_cache_mib: int = 1024,
) -> DistEnv:
    """Initialize the process group from the torchrun environment (gloo on CPU, NCCL on CUDA),
    choose the device and the CPU threads, tune glibc's malloc for repeated tensor allocations, and
    filter logging to rank 0.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        threads_per_worker: torch intra-op threads; 0 divides the CPU cores among local workers.
        timeout_s: collective timeout, after which a stuck rank raises instead of hanging.
        malloc_cache_mib: free heap memory this process keeps for reuse (:func:`keep_freed_memory`);
            0 leaves the C library's defaults.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = world_size_from_env()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    dev = _pick_device(device, local_rank)
    keep_freed_memory(malloc_cache_mib)
    if dev.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(threads_per_worker or max(1, cores // local_world_size))
    backend = None
    if world_size > 1:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            store = _attempt_store(rank, world_size, timeout_s)
            if store is not None:
                kwargs.update(store=store, rank=rank, world_size=world_size)
            dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    configure_logging(rank)
    env = DistEnv(rank, world_size, local_rank, local_world_size, dev, backend)
    log.info("rank %d/%d on %s, backend %s, %d CPU threads", rank, world_size, dev, backend, torch.get_num_threads())
    return env


class _TerminalHandler(logging.StreamHandler):
    """Writes each record through ``tqdm.write``, which clears this process's live progress bar,
    writes the line and redraws the bar, so log lines never glue onto the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must not raise; the standard handler's policy
            self.handleError(record)


def _formatter(rank: int) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")


def _replace_handler(kind: str, handler: logging.Handler | None) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_largebatch", None) == kind:
            root.removeHandler(h)
            h.close()
    if handler is not None:
        handler._largebatch = kind  # type: ignore[attr-defined]
        root.addHandler(handler)


def configure_logging(rank: int, level: int = logging.INFO) -> None:
    """Log to stderr from rank 0 only (through tqdm, so lines and the progress bar do not mix); other
    ranks report warnings and errors, tagged with their rank."""
    handler = _TerminalHandler(sys.stderr)
    handler.setFormatter(_formatter(rank))
    handler.setLevel(level if rank == 0 else logging.WARNING)
    _replace_handler("terminal", handler)
    logging.getLogger().setLevel(level)


def log_to_file(path, rank: int, level: int = logging.INFO) -> None:
    """Also append this process's log to ``path`` (the run's ``train.log``): every record of rank 0,
    warnings and errors of the other ranks, in the terminal's format."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(_formatter(rank))
    handler.setLevel(level if rank == 0 else logging.WARNING)
    _replace_handler("file", handler)


def close_log_file() -> None:
    """Stop :func:`log_to_file` (at the end of a run in a process that goes on)."""
    _replace_handler("file", None)


def cleanup() -> None:
    """Destroy the process group if one exists (clean shutdown)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def average_buffers(model: torch.nn.Module) -> None:
    """Average every floating-point buffer (BN running mean and variance) across ranks, so all ranks
    evaluate and checkpoint the same statistics; Goyal's per-worker BN leaves them rank-local.
    The variance buffers are averaged arithmetically (the mean of the per-rank running variances)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1) for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for b in buffers:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def consecutive_groups(group_size: int):
    """Split the ranks into groups of ``group_size`` consecutive ranks ([0, g), [g, 2g), ...) and
    return this rank's process group (every rank creates every group, as ``new_group`` requires).
    Used by group-synchronized BN (``train.bn.sync_ranks``).

    Raises:
        ValueError: if the world size is not a multiple of ``group_size``.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if group_size < 1 or world % group_size:
        raise ValueError(f"train.bn.sync_ranks={group_size} must divide the number of processes ({world})")
    mine = None
    for start in range(0, world, group_size):
        group = dist.new_group(list(range(start, start + group_size)))
        if start <= rank < start + group_size:
            mine = group
    return mine
