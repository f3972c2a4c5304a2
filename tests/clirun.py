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
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from subprocess import DEVNULL, PIPE, STDOUT

_REAL_RUN, _REAL_POPEN = subprocess.run, subprocess.Popen


def _fd(target, pipe_file) -> int | None:
    """The file descriptor a child's stream goes to (None: this process's)."""
    if target == PIPE:
        return pipe_file.fileno()
    if target is None:
        return None
    if target == DEVNULL:
        return os.open(os.devnull, os.O_WRONLY)
    return target if isinstance(target, int) else target.fileno()


def preload() -> None:
    """Import what a command needs, once, in the test process (before the first fork)."""
    import torchvision  # noqa: F401

    import largebatch.cli
    import largebatch.train.run  # noqa: F401

    largebatch.cli.commands()  # the subcommand modules, which build_parser() would import in each child


class Forked:
    """A ``subprocess.Popen``-like handle of ``largebatch ARGS`` run in a forked child."""

    def __init__(
        self, args, *, cwd=None, env=None, start_new_session=False, stdout=PIPE, stderr=PIPE, text=True
    ) -> None:
        """``stdout`` / ``stderr``: PIPE (kept for :meth:`communicate`, the default), None (this
        process's), DEVNULL, a file object, or (stderr) STDOUT."""
        preload()
        self.args = ["largebatch", *[str(a) for a in args]]
        self.returncode: int | None = None
        self.text = text
        self._out = tempfile.TemporaryFile() if stdout == PIPE else None
        self._err = tempfile.TemporaryFile() if stderr == PIPE else None
        out_fd = _fd(stdout, self._out)
        err_fd = out_fd if stderr == STDOUT else _fd(stderr, self._err)
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
                if out_fd is not None:
                    os.dup2(out_fd, 1)
                if err_fd is not None:
                    os.dup2(err_fd if err_fd != out_fd else 1, 2)
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

    def _read(self, f):
        if f is None:
            return None
        f.seek(0)
        data = f.read()
        return data.decode(errors="replace") if self.text else data

    def communicate(self, timeout: float | None = None) -> tuple:
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


def _is_largebatch(cmd, env=None) -> bool:
    """``cmd`` is this interpreter's ``-m largebatch`` with the same import path (a fork cannot take
    another PYTHONPATH: that command needs a fresh interpreter)."""
    same_path = env is None or env.get("PYTHONPATH") == os.environ.get("PYTHONPATH")
    return same_path and isinstance(cmd, (list, tuple)) and list(cmd[:3]) == [sys.executable, "-m", "largebatch"]


def subprocess_run(
    cmd,
    *,
    cwd=None,
    env=None,
    timeout=None,
    capture_output=False,
    stdout=None,
    stderr=None,
    text=None,
    check=False,
    **kwargs,
) -> subprocess.CompletedProcess:
    """``subprocess.run``, forked when ``cmd`` is ``[sys.executable, "-m", "largebatch", ...]``; any other
    command runs as a real subprocess."""
    if not _is_largebatch(cmd, env) or kwargs:
        return _REAL_RUN(
            cmd,
            cwd=cwd,
            env=env,
            timeout=timeout,
            capture_output=capture_output,
            stdout=stdout,
            stderr=stderr,
            text=text,
            check=check,
            **kwargs,
        )
    if capture_output:
        stdout = stderr = PIPE
    proc = Forked(cmd[3:], cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=bool(text))
    out, err = proc.communicate(timeout=timeout)
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def popen(cmd, *args, cwd=None, env=None, start_new_session=False, stdout=None, stderr=None, text=None, **kwargs):
    """``subprocess.Popen``, forked (:class:`Forked`) when ``cmd`` is ``[sys.executable, "-m",
    "largebatch", ...]``."""
    if not _is_largebatch(cmd, env) or args or kwargs:
        return _REAL_POPEN(
            cmd,
            *args,
            cwd=cwd,
            env=env,
            start_new_session=start_new_session,
            stdout=stdout,
            stderr=stderr,
            text=text,
            **kwargs,
        )
    return Forked(
        cmd[3:], cwd=cwd, env=env, start_new_session=start_new_session, stdout=stdout, stderr=stderr, text=bool(text)
    )


def fork_largebatch_commands(monkeypatch) -> None:
    """Make ``subprocess.run`` and ``subprocess.Popen`` fork every ``python -m largebatch`` command
    (the trials of ``sweep``, the branches of ``critical-batch``, the probe of ``advise``), in this
    process and in every command forked from it."""
    monkeypatch.setattr(subprocess, "run", subprocess_run)
    monkeypatch.setattr(subprocess, "Popen", popen)


SMALL_SYNTHETIC = (
    "data.name=synthetic",
    "data.synthetic.train_samples=512",
    "data.synthetic.test_samples=64",
    "data.image_size_px=12",
    "train.global_batch_size=64",
    "train.bn.batch_size=16",
    "model.width=4",
    "schedule.warmup_epochs=0",
    "schedule.decay_epochs=[]",
    "train.log_every_steps=1",
)
"""A run of 8 steps per epoch on 512 small synthetic images (the signal and attack tests)."""


def sets(*items: str) -> list[str]:
    """``--set ITEM`` for each of ``items``."""
    return [arg for item in items for arg in ("--set", item)]


def set_items(cfg) -> list[str]:
    """What the study passed before the launcher (kept to test that run directories made that way
    still resume): every leaf of every section as ``--set KEY=JSON``."""
    out = []

    def leaves(prefix, values):
        for key, value in values.items():
            if isinstance(value, dict):
                leaves(f"{prefix}{key}.", value)
            else:
                out.append(f"{prefix}{key}={json.dumps(value)}")

    from largebatch.config import to_dict

    for section, values in to_dict(cfg).items():
        if isinstance(values, dict):
            leaves(f"{section}.", values)
    return out
