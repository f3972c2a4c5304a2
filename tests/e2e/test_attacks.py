"""Attacks on runs, checkpoints and the launcher, kept as tests: each of them broke on the code of
2026-12-07 (a module named by a run's config ran in `eval`; a refused run deleted the live run's
checkpoint temp file; a non-finite checkpoint was resumed and rotation deleted the last finite one;
SIGTERM before the elastic agent or after the last step, and SIGINT to one worker, were silent or
misreported; bad run directories and checkpoints gave tracebacks). The data, study and simulate
attacks are in test_attacks_data_study.py, the config refusals in tests/unit."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clirun
from largebatch.api import load_config, prepare_run
from largebatch.config import ConfigError, to_dict
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.runlock import run_dir_lock

pytestmark = pytest.mark.e2e

# 512 images / 64 = 8 steps per epoch (as tests/e2e/test_signals.py)
SMALL = list(clirun.SMALL_SYNTHETIC)


def train_args(out: Path, *sets: str, nproc: int = 2) -> list[str]:
    args = ["train", "--nproc", str(nproc), "--out", str(out)]
    for item in [*SMALL, *sets]:
        args += ["--set", item]
    return args


def wait_for(predicate, proc, *, poll_s: float = 0.05, timeout_s: float = 120) -> None:
    """Wait until ``predicate()`` holds while ``proc`` runs (its stderr in the failure if it ends)."""
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout_s, "timed out"
        time.sleep(poll_s)


def one_line(proc) -> str:
    """The single line of a refused command's stderr (no traceback)."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# --- a run's stored config never runs code -------------------------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_name("RAN").write_text("the planted module ran")
import torch
def build(num_classes, in_channels):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_channels * 12 * 12, num_classes))
"""


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A run directory whose config names ``evilmod:build``, with evilmod.py importable (in the
    working directory, on the path of the forked commands), and the marker file the module writes
    when it runs."""
    (tmp_path / "evilmod.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "evilmod" not in sys.modules
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("", [*SMALL, "model.name=evilmod:build"])
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
    ckpt_io.export_weights(run / "model_final.pt", model.state_dict())
    ckpt_io.save_checkpoint(run, 8, {"config": to_dict(cfg), "model": model.state_dict()}, keep=2)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    return tmp_path, run, env, tmp_path / "RAN"


def test_eval_never_imports_a_plugin_that_only_the_run_names(planted):
    cwd, run, env, marker = planted
    for target in (run, run / "model_final.pt", run / "checkpoints" / "ckpt_step00000008.pt"):
        proc = clirun.run("eval", str(target), cwd=cwd, env=env, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = one_line(proc)
        assert "model.name='evilmod:build'" in line and "--trust-plugins" in line and "nothing was imported" in line
        assert not marker.exists()
    # the opt-in and naming the plugin yourself both load it (the user's own choice)
    proc = clirun.run("eval", str(run), "--trust-plugins", cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.exists() and json.loads(proc.stdout)["count"] == 64
    marker.unlink()
    proc = clirun.run("eval", str(run), "--set", "model.name=evilmod:build", cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 0 and marker.exists(), proc.stderr[-2000:]


def test_critical_batch_never_imports_a_plugin_that_only_the_run_names(planted):
    cwd, run, env, marker = planted
    proc = clirun.run("critical-batch", str(run), "--out", str(cwd / "cb"), cwd=cwd, env=env, timeout=120)
    assert proc.returncode == 2 and "--trust-plugins" in one_line(proc)
    assert not marker.exists() and not (cwd / "cb").exists()


# --- a refused run never harms a live one ---------------------------------------------------------


def test_a_refused_run_leaves_a_live_writers_temp_files(tmp_path):
    """prepare_run() used to delete every checkpoint temp file before the refused run even asked for
    the lock, so a live run lost the file it was about to rename and died."""
    run = tmp_path / "run"
    cfg = load_config("", SMALL)
    d = ckpt_io.checkpoint_dir(run)
    d.mkdir(parents=True)
    ckpt_io.save_checkpoint(run, 8, {"config": to_dict(cfg), "model": {"w": torch.ones(2)}}, keep=2)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live writer's pid
    try:
        host = ckpt_io._host_tag()
        live = d / f".ckpt_step00000009.pt.{host}-{writer.pid}.x1y2.tmp"
        live.write_bytes(b"half written")
        foreign = d / ".ckpt_step00000009.pt.sha256.otherhost-1.ab.tmp"  # another node's, just now
        foreign.write_bytes(b"half")
        with run_dir_lock(run):  # the live run holds the directory
            with pytest.raises(ConfigError, match="in use by another run"):
                prepare_run(cfg, nproc=1, out=run, resume="auto")  # what a second `--resume auto` does first
            with pytest.raises(ConfigError, match="in use by another run"):
                with run_dir_lock(run):
                    pass
            assert live.exists() and foreign.exists()
            assert ckpt_io.remove_stale_temp_files(run) == []  # even the clean-up keeps a live writer's files
    finally:
        writer.kill()
        writer.wait()
    dead = d / f".ckpt_step00000010.pt.{host}-{writer.pid}.zz.tmp"
    dead.write_bytes(b"half")
    orphan = d / "ckpt_step00000007.pt.sha256"  # its checkpoint was deleted by a rotation cut short
    orphan.write_text("0" * 64 + "  ckpt_step00000007.pt\n")
    old = time.time() - 2 * ckpt_io.FOREIGN_TMP_GRACE_S
    os.utime(foreign, (old, old))
    removed = ckpt_io.remove_stale_temp_files(run)
    assert sorted(removed) == sorted([live, foreign, dead, orphan])
    assert [p.name for p in ckpt_io.list_checkpoints(run)] == ["ckpt_step00000008.pt"]
    assert ckpt_io.checksum_path(d / "ckpt_step00000008.pt").exists()


def test_refused_runs_racing_a_live_runs_checkpoint_writes(tmp_path):
    out = tmp_path / "run"
    live = clirun.start(*train_args(out, "train.epochs=4", "train.checkpoint_every_steps=1"), cwd=tmp_path)
    wait_for(lambda: ckpt_io.list_checkpoints(out), live, poll_s=0.05)
    refused = 0
    while live.poll() is None and refused < 12:
        proc = clirun.run(*train_args(out, "train.epochs=4", "train.checkpoint_every_steps=1"), "--resume", "auto",
                          cwd=tmp_path, timeout=120)  # fmt: skip
        if live.poll() is None or proc.returncode == 2:
            assert proc.returncode == 2 and "in use by another run" in one_line(proc)
            refused += 1
    _, err = live.communicate(timeout=300)
    assert live.returncode == 0, err[-3000:]
    assert refused >= 3
    assert json.loads((out / "summary.json").read_text())["steps"] == 32
    leftovers = [p.name for p in ckpt_io.checkpoint_dir(out).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


# --- a checkpoint whose weights are not finite is not a good checkpoint ---------------------------


def _payload(cfg, value: float) -> dict:
    return {"config": to_dict(cfg), "model": {"w": torch.full((3,), value), "b": torch.zeros(2)}}


def test_non_finite_checkpoints_are_never_resumed_and_never_displace_the_last_finite_one(tmp_path):
    cfg = load_config("", SMALL)
    good = ckpt_io.save_checkpoint(tmp_path, 8, _payload(cfg, 1.0), keep=1)
    for step in (9, 10, 11):  # a run whose weights went NaN keeps writing checkpoints
        ckpt_io.save_checkpoint(tmp_path, step, _payload(cfg, float("nan")), keep=1)
    names = [p.name for p in ckpt_io.list_checkpoints(tmp_path)]
    assert good.name in names and names[-1] == "ckpt_step00000011.pt"
    assert len(names) == 2  # the older NaN ones rotate away (keep=1), the finite one stays
    assert ckpt_io.newest_usable_checkpoint(tmp_path) == good
    path, _ = ckpt_io.latest_valid_checkpoint(tmp_path)
    assert path == good  # --resume auto falls back to it
    with pytest.raises(ckpt_io.CheckpointError, match=r"non-finite weights \(1 of 2 tensors: w\)"):
        ckpt_io.load_checkpoint(tmp_path / "checkpoints" / "ckpt_step00000011.pt")
    ckpt_io.save_checkpoint(tmp_path, 12, _payload(cfg, 2.0), keep=1)  # finite again: rotation as usual
    assert [p.name for p in ckpt_io.list_checkpoints(tmp_path)] == ["ckpt_step00000012.pt"]


def test_resume_from_a_nan_checkpoint_is_refused_before_any_worker(tmp_path):
    out = tmp_path / "run"
    cfg = load_config("", SMALL)
    bad = ckpt_io.save_checkpoint(out, 8, _payload(cfg, float("inf")), keep=2)
    proc = clirun.run(*train_args(out), "--resume", str(bad), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "non-finite weights" in one_line(proc)
    proc = clirun.run(*train_args(out), "--resume", "auto", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warning, error = proc.stderr.strip().splitlines()
    assert "holds non-finite weights" in warning and error.startswith("largebatch: error: --resume auto: no checkpoint")
    assert [p.name for p in ckpt_io.list_checkpoints(out)] == [bad.name]


def test_a_diverged_run_says_truthfully_which_checkpoint_is_usable(tmp_path):
    out = tmp_path / "run"
    args = train_args(
        out,
        "optim.base_lr=1e8",
        "train.epochs=2",
        "train.checkpoint_every_steps=1",
        "train.max_nonfinite_steps=3",
        nproc=1,
    )
    proc = clirun.run(*args, cwd=tmp_path, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "NonFiniteGradient" in line and "Traceback" not in proc.stderr
    assert "checkpoint is kept" not in line  # it used to say so whatever was on disk
    usable = ckpt_io.newest_usable_checkpoint(out)
    if usable is None:
        assert "no usable checkpoint (with finite weights) exists" in line
    else:
        assert f"the newest usable checkpoint (finite weights) is {usable}" in line


# --- signals from the launcher's first instant to its exit ---------------------------------------


def _catches_sigterm(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_sigterm_to_the_launcher_before_the_agent_starts_is_one_line_and_75(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "largebatch", *train_args(out)]
    proc = clirun._REAL_POPEN(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)  # a fresh interpreter
    t0 = time.time()
    while not _catches_sigterm(proc.pid) and time.time() - t0 < 1.5:
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # while torch is still being imported
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, (proc.returncode, err[-2000:])  # was 143 with nothing printed
    assert err.strip().splitlines()[-1].startswith("largebatch: stopped by SIGTERM")
    assert "Traceback" not in err


def test_sigterm_after_the_last_step_of_a_one_process_run_exits_0(tmp_path):
    out = tmp_path / "run"
    proc = clirun.start(*train_args(out, "train.epochs=1", nproc=1), cwd=tmp_path)
    wait_for(lambda: (out / "summary.json").exists(), proc, poll_s=0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, err[-2000:])  # was 143, silent
    last = err.strip().splitlines()[-1]
    assert ("SIGTERM arrived as" in last or "done: top-1" in last) and "Traceback" not in err


def test_sigint_to_one_worker_is_reported_as_sigint(tmp_path):
    out = tmp_path / "run"
    proc = clirun.start(*train_args(out, "train.epochs=40", "train.checkpoint_every_steps=4"), cwd=tmp_path)
    wait_for(lambda: ckpt_io.list_checkpoints(out), proc, poll_s=0.05)
    worker = next(
        int(p.parent.name)
        for p in Path("/proc").glob("[0-9]*/stat")
        if p.read_text().rsplit(")", 1)[1].split()[1] == str(proc.pid)
    )
    os.kill(worker, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err[-3000:])  # was 75, "stopped by SIGTERM"
    last = err.strip().splitlines()[-1]
    assert last.startswith("largebatch: stopped by SIGINT;") and "Traceback" not in err


# --- bad run directories and checkpoints: one line, exit 2 ---------------------------------------


def test_out_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = clirun.run(*train_args(tmp_path / "afile" / "run"), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "is a file, not a folder" in one_line(proc)


def test_eval_of_weights_or_configs_that_do_not_fit_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config("", SMALL)
    (run / "config.json").write_text(json.dumps(to_dict(cfg)))
    ckpt_io.export_weights(run / "model_final.pt", {"fc.weight": torch.zeros(3, 3)})
    proc = clirun.run("eval", str(run), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "does not fit the model" in proc.stderr.strip().splitlines()[-1]  # after eval's set-up log line
    for text in ("[1, 2]", json.dumps({**to_dict(cfg), "nonsense": {"a": 1}})):
        (run / "config.json").write_text(text)
        proc = clirun.run("eval", str(run), cwd=tmp_path, timeout=120)
        assert proc.returncode == 2 and "config.json" in one_line(proc)


def test_resuming_a_checkpoint_with_a_wrong_tensor_shape_is_one_line(tmp_path):
    out = tmp_path / "run"
    proc = clirun.run(*train_args(out, "train.epochs=1", nproc=1), cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = ckpt_io.list_checkpoints(out)[-1]
    ckpt = ckpt_io.load_checkpoint(path)
    name = next(k for k, v in ckpt["model"].items() if v.dim() == 4)
    ckpt["model"][name] = torch.zeros(1, 1, 1, 1)
    ckpt.pop("format")
    bad = ckpt_io.save_checkpoint(out, 100, ckpt, keep=10)  # checksum-valid, wrong shape
    proc = clirun.run(*train_args(out, "train.epochs=1", nproc=2), "--resume", str(bad), cwd=tmp_path, timeout=240)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "does not fit the model" in line and name in line and "Traceback" not in proc.stderr
