"""``python -m largebatch ARGS`` as a fork of the test process, which has torch, torchvision and the
trainer imported already: a process of its own (pid, exit status, signals, working directory,
environment, stdout and stderr in files) like ``subprocess``'s, without the 3-4 s of interpreter
start-up and imports each command costs in a fresh interpreter (most of an end-to-end test's time
on 2 cores). The command's workers are forked from it as ``largebatch train --nproc N`` forks them
from the launcher. Tests that check the installed console script or a fresh interpreter keep
``subprocess`` (test_api.py, the torchrun and piping tests).

The test process must not hold an OpenMP pool of several threads when it forks (GNU OpenMP does not
survive a fork): the suite runs with OMP_NUM_THREADS=1 (conftest.py).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback


def preload() -> None:
    """Import what a command needs, once, in the test process (before the first fork)."""
    import torchvision  # noqa: F401

    import largebatch.cli  # noqa: F401
    import largebatch.train.run  # noqa: F401


class Forked:
    """A ``subprocess.Popen``-like handle of ``largebatch ARGS`` run in a forked child."""

    def __init__(self, args, *, cwd=None, env=None, start_new_session=False) -> None:
        preload()
        self.args = ["largebatch", *[str(a) for a in args]]
        self.returncode: int | None = None
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                if start_new_session:
                    os.setsid()
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.dup2(self._out.fileno(), 1)
                os.dup2(self._err.fileno(), 2)
                sys.stdin = open(0, closefd=False)
                sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), line_buffering=True)
                sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), line_buffering=True)
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.default_int_handler)
                logging.root.handlers = []  # pytest's capture handlers: a fresh interpreter has none
                logging.root.setLevel(logging.WARNING)
                if env is not None:
                    os.environ.clear()
                    os.environ.update(env)
                if cwd is not None:
                    os.chdir(cwd)
                sys.argv = [sys.executable, "-m", "largebatch", *self.args[1:]]
                from largebatch.cli import main

                code = main(self.args[1:])
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                for stream in (sys.stdout, sys.stderr):
                    try:
                        stream.flush()
                    except Exception:
                        pass
                os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.02)
        return self.returncode

    def _read(self, f) -> str:
        f.seek(0)
        return f.read().decode(errors="replace")

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        return self._read(self._out), self._read(self._err)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(*args, cwd=None, env=None, start_new_session=False) -> Forked:
    """Start ``largebatch ARGS`` (what ``subprocess.Popen([python, -m, largebatch, *ARGS])`` would)."""
    return Forked(args, cwd=cwd, env=env, start_new_session=start_new_session)


def run(*args, cwd=None, env=None, timeout: float | None = 600) -> subprocess.CompletedProcess:
    """Run ``largebatch ARGS`` to the end (what ``subprocess.run(..., capture_output=True, text=True)``
    gives); a command past ``timeout`` seconds is killed and raises ``subprocess.TimeoutExpired``."""
    proc = Forked(args, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _is_largebatch(cmd) -> bool:
    return isinstance(cmd, (list, tuple)) and list(cmd[:3]) == [sys.executable, "-m", "largebatch"]


def subprocess_run(cmd, *, cwd=None, env=None, timeout=None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, ...)``, forked (:func:`run`) when ``cmd`` is
    ``[sys.executable, "-m", "largebatch", ...]``; any other command runs as a real subprocess."""
    if not _is_largebatch(cmd):
        return subprocess.run(cmd, cwd=cwd, env=env, timeout=timeout, **kwargs)
    return run(*cmd[3:], cwd=cwd, env=env, timeout=timeout)


def popen(cmd, *, cwd=None, env=None, start_new_session=False, **kwargs):
    """``subprocess.Popen(cmd, stdout=PIPE, stderr=PIPE, text=True, ...)``, forked (:class:`Forked`)
    when ``cmd`` is ``[sys.executable, "-m", "largebatch", ...]``."""
    if not _is_largebatch(cmd):
        return subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=start_new_session, **kwargs)
    return Forked(cmd[3:], cwd=cwd, env=env, start_new_session=start_new_session)
