"""Signals and failures of `largebatch train --nproc 2`, end to end on a small synthetic data set:
SIGTERM to one worker, to the launcher at start-up and after the last step, Ctrl-C; which failures
restart the workers (only deaths) and which end the run at once (errors); a worker's error as one
line on the terminal with the traceback in the run's train.log; no torch error files left behind."""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import clirun
from largebatch.train.checkpoint import list_checkpoints, step_of

pytestmark = pytest.mark.e2e

# 512 images / 64 = 8 steps per epoch
SMALL = list(clirun.SMALL_SYNTHETIC)
DIVERGES = ["optim.base_lr=1e8", "train.nonfinite_policy=stop", "train.epochs=2"]


def command(out: Path, *sets: str, nproc: int = 2, extra: tuple = ()) -> list[str]:
    args = ["train", "--nproc", str(nproc), "--out", str(out), *extra]
    for item in [*SMALL, *sets]:
        args += ["--set", item]
    return args


def env(tmp_path: Path) -> dict:
    # TMPDIR: where torch would leave its per-worker error pickles; nothing may stay there
    return dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=str(tmp_path / "tmp"))


def run(args, tmp_path, timeout=240):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return clirun.run(*args, cwd=tmp_path, env=env(tmp_path), timeout=timeout)


def start(args, tmp_path, **kw):
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return clirun.start(*args, cwd=tmp_path, env=env(tmp_path), **kw)


def wait_for(predicate, proc, timeout=180):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def workers(parent: int) -> list[int]:
    """The forked workers of the launcher ``parent`` (children with the launcher's command line)."""
    launcher = (Path("/proc") / str(parent) / "cmdline").read_bytes()
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            same = (stat.parent / "cmdline").read_bytes() == launcher
        except OSError:
            continue
        if ppid == parent and same:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def train_records(out: Path) -> int:
    path = out / "metrics.jsonl"
    return sum(1 for line in path.open() if '"train"' in line) if path.exists() else 0


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r"largebatch: error|Traceback| ERROR |Error:", line)]


def test_a_deterministic_error_is_not_restarted_and_is_one_line(tmp_path):
    out = tmp_path / "run"
    proc = run(command(out, *DIVERGES, extra=("--max-restarts", "2")), tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    # one line names the cause; the tracebacks go to the run's log (there were 8 before, one per
    # worker and restart, and the error was retried for every --max-restarts)
    assert "Traceback" not in proc.stderr and "restart" not in proc.stderr, proc.stderr[-3000:]
    assert error_lines(proc.stderr) == proc.stderr.strip().splitlines()[-1:]
    last = proc.stderr.strip().splitlines()[-1]
    assert re.match(r"largebatch: error: worker rank \d failed \(exit code 1\): NonFiniteGradient: step \d+", last)
    assert last.endswith(f"traceback in {out / 'train.log'}")
    log = (out / "train.log").read_text()
    assert "Traceback (most recent call last)" in log and "NonFiniteGradient" in log
    assert "rank 0] INFO largebatch.train.run: run directory" in log  # the run's own log lines too
    assert not list((tmp_path / "tmp").glob("pytorch-errorfile-*"))  # none left in TMPDIR (they were)


def test_one_process_fails_with_one_line_too(tmp_path):
    out = tmp_path / "run"
    proc = run(command(out, *DIVERGES, nproc=1), tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("largebatch: error: the run failed: NonFiniteGradient: step")
    assert last.endswith(f"traceback in {out / 'train.log'}")
    assert "Traceback (most recent call last)" in (out / "train.log").read_text()


def test_sigterm_to_one_worker_checkpoints_and_exits_75_without_a_restart(tmp_path):
    out = tmp_path / "run"
    proc = start(command(out, "train.epochs=40", extra=("--max-restarts", "2")), tmp_path)
    wait_for(lambda: train_records(out) >= 3, proc)
    victims = workers(proc.pid)
    assert len(victims) == 2, victims
    os.kill(victims[1], signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # it used to restart the group (a SIGTERM is not a death) and train to the end with exit 0
    assert proc.returncode == 75, err[-3000:]
    assert "restart" not in err and "Traceback" not in err, err[-3000:]
    step = step_of(list_checkpoints(out)[-1])
    assert 3 <= step < 320 and not (out / "summary.json").exists()
    assert err.strip().splitlines()[-1] == (
        f"largebatch: stopped by SIGTERM; the workers wrote a checkpoint at step {step}: "
        f"continue with --out {out} --resume auto"
    )


def test_sigterm_at_start_up_claims_no_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = start(command(out, "train.epochs=40"), tmp_path)
    wait_for(lambda: len(workers(proc.pid)) == 2, proc)  # workers exist, nothing trained yet
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    last = err.strip().splitlines()[-1]
    found = list_checkpoints(out)
    if found:  # the workers got as far as a step: they wrote a checkpoint there, and say which
        assert last.endswith(
            f"wrote a checkpoint at step {step_of(found[-1])}: continue with --out {out} --resume auto"
        )
    else:  # it used to claim "the workers wrote a checkpoint" here
        assert last == (
            f"largebatch: stopped by SIGTERM; before its first checkpoint, so there is nothing to resume: "
            f"--out {out} --resume auto starts it again"
        )


def test_sigterm_after_the_last_step_lets_the_run_finish_at_once(tmp_path):
    out = tmp_path / "run"
    proc = start(command(out, "train.epochs=2"), tmp_path)
    wait_for(lambda: (out / "model_final.pt").exists(), proc)  # the final phase: export, summary, figure
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    # it used to finish, hang 30 s for the agent and exit 75 as if stopped
    assert proc.returncode == 0, err[-3000:]
    assert time.time() - t0 < 20 and "forcefully" not in err
    assert json.loads((out / "summary.json").read_text())["steps"] == 16
    assert err.strip().splitlines()[-1].startswith("largebatch: SIGTERM arrived as the run was finishing; it finished")


def test_ctrl_c_stops_every_process_and_says_where_the_run_stands(tmp_path):
    out = tmp_path / "run"
    proc = start(command(out, "train.epochs=40", "train.checkpoint_every_steps=2"), tmp_path, start_new_session=True)
    wait_for(lambda: len(list_checkpoints(out)) >= 1, proc)
    victims = workers(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    newest = step_of(list_checkpoints(out)[-1])
    last = err.strip().splitlines()[-1]
    assert last.startswith("largebatch: stopped by SIGINT;") and f"at step {newest}:" in last, last
    assert last.endswith(f"continue with --out {out} --resume auto")
    time.sleep(0.5)
    assert victims and not [pid for pid in victims if Path(f"/proc/{pid}").exists()]
