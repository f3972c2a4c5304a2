"""The run directory belongs to one run at a time, and the elastic agent's files stay inside it:
a second run on a directory in use is refused with one line (exit 2) while the first trains on;
the lock is released at the end; the agent's per-attempt folders go to ``<run dir>/elastic`` (error
files of a failed worker kept there, removed when empty) instead of ``/tmp/torchelastic_*``."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

import pytest

import clirun
from largebatch.config import ConfigError
from largebatch.dist.launch import WorkerFailed, launch_local
from largebatch.train.runlock import LOCK_NAME, run_dir_lock

pytestmark = pytest.mark.dist


def test_the_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with run_dir_lock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with run_dir_lock(tmp_path / "run"):
                pass
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with run_dir_lock(tmp_path / "run"):  # free again
        pass


def _ok(value):
    return value * 2


def _fail(value):
    raise RuntimeError(f"planted failure {value}")


def test_elastic_files_stay_in_the_run_directory(tmp_path):
    logs = tmp_path / "run" / "elastic"
    assert launch_local(_ok, (21,), nproc=2, start_method="fork", log_dir=logs) == {0: 42, 1: 42}
    assert not logs.exists()  # nothing to keep after a success
    with pytest.raises(WorkerFailed, match="planted failure 1"):
        launch_local(_fail, (1,), nproc=2, start_method="fork", log_dir=logs)
    assert any(p.is_file() for p in logs.rglob("*"))  # the failed attempt's files, inside the run


def test_a_second_run_on_the_same_directory_is_refused(tmp_path):
    out = tmp_path / "run"
    sets = [
        "data.name=synthetic",
        "data.synthetic.train_samples=512",
        "data.synthetic.test_samples=64",
        "data.image_size_px=12",
        "train.global_batch_size=64",
        "train.bn.batch_size=16",
        "train.epochs=4",
        "model.width=4",
        "schedule.warmup_epochs=0",
        "schedule.decay_epochs=[]",
    ]
    args = [sys.executable, "-m", "largebatch", "train", "--nproc", "2", "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    # a live run holds the directory (here this test process, deterministically; two CLI runs started
    # 0.3 s apart both pass the "already holds checkpoints" check and then meet here)
    with run_dir_lock(out):
        second = clirun.subprocess_run(args, capture_output=True, text=True, timeout=120)
    lines = second.stderr.strip().splitlines()  # the plan line, then one error line
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert [x for x in lines if "error" in x] == lines[-1:]
    assert f"run directory {out} is in use by another run (pid {os.getpid()})" in lines[-1]
    assert not list(out.iterdir())  # the refused run wrote nothing
    first = clirun.subprocess_run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (out / LOCK_NAME).exists() and not (out / "elastic").exists()


def _listening_addresses(pids: list[int]) -> list[str]:
    """'address:port' of every listening TCP socket (IPv4 and IPv6) held by one of ``pids``, from /proc."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.append(f"{socket.inet_ntop(family, words)}:{int(port, 16)}")
    return found


def _listeners_of_launcher_and_worker(_):
    return _listening_addresses([os.getppid(), os.getpid()])


def test_the_rendezvous_and_bootstrap_stores_listen_on_loopback_only(tmp_path):
    # both stores of the elastic agent (the rendezvous and the workers' bootstrap store) used to bind
    # every interface ('*:port', IPv4 and IPv6), open to the network without credentials
    seen = launch_local(_listeners_of_launcher_and_worker, (0,), nproc=2, start_method="fork")
    for rank, addresses in seen.items():
        assert len(addresses) >= 2, (rank, addresses)  # at least the two stores, which the launcher holds
        assert all(a.startswith(("127.0.0.1:", "::ffff:127.0.0.1:", "::1:")) for a in addresses), (rank, addresses)
