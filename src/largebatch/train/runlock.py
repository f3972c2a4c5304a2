"""One run at a time in a run directory: an advisory lock (``flock``) on ``<run dir>/.lock`` held by
the launching process for the run's whole life, elastic restarts included. A second run started on
the same ``--out`` while the first is alive is refused (exit 2) instead of racing it for the
directory (docs/reliability.md). Under torchrun, where no launching process of ours exists, the
lock is not taken."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from largebatch.config import ConfigError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock inside the ``with`` block (the directory is created).

    Raises:
        ConfigError: another live process holds it (its pid in the message).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_ino != _inode(path):
            # the holder ended and removed the file between our open and our flock, and a third run
            # may hold a new one: the lock we got is on a file nobody else can see
            raise BlockingIOError
    except BlockingIOError:
        err = _in_use(run_dir, fd)
        os.close(fd)
        raise err from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


def check_not_in_use(run_dir: Path) -> None:
    """Refuse early, before anything is decided or written, a run directory that a live run holds
    (:func:`run_dir_lock` takes the lock for real afterwards; this creates nothing).

    Raises:
        ConfigError: another live process holds the lock (its pid in the message).
    """
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or no directory): nobody holds it
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise _in_use(run_dir, fd) from None
    finally:
        os.close(fd)


def _in_use(run_dir: Path, fd: int) -> ConfigError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
    return ConfigError(
        f"run directory {run_dir} is in use by another run (pid {holder}); wait for it to end, "
        f"or choose another --out (nothing was written)"
    )
