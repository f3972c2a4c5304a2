"""The run directory belongs to one run at a time, and the elastic agent's files stay inside it:
a second run on a directory in use is refused with one line (exit 2) while the first trains on;
the lock is released at the end; the agent's per-attempt folders go to ``<run dir>/elastic`` (error
files of a failed worker kept there, removed when empty) instead of ``/tmp/torchelastic_*``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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
        second = subprocess.run(args, capture_output=True, text=True, timeout=120)
    lines = second.stderr.strip().splitlines()  # the plan line, then one error line
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert [x for x in lines if "error" in x] == lines[-1:]
    assert f"run directory {out} is in use by another run (pid {os.getpid()})" in lines[-1]
    assert not list(out.iterdir())  # the refused run wrote nothing
    first = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert not (out / LOCK_NAME).exists() and not (out / "elastic").exists()
