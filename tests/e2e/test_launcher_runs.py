"""The study's launcher (largebatch.study.launch) end to end on a small synthetic run: it returns the
run's RunSummary, tells a diverged run from a failed one by the exit status, and continues a run
directory that an earlier version started with ``--recipe NAME`` and every key as ``--set``."""

import dataclasses
import json

import pytest

import clirun
from largebatch.api import load_config
from largebatch.errors import EXIT_BAD_INPUT, EXIT_FAILED
from largebatch.study.launch import CONFIG_FILE, RunFailed, run_train
from largebatch.summary import RunSummary
from largebatch.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.e2e

RECIPE = "goyal2017_fashion_mnist_28px"
SMALL = [*clirun.SMALL_SYNTHETIC, "train.epochs=1", "train.noise_scale=false"]  # 8 steps
DIVERGES = ["optim.base_lr=1e8", "train.nonfinite_policy=stop", "train.epochs=2"]


def config(*extra):
    return load_config(RECIPE, [*SMALL, *extra])


def test_the_launcher_returns_the_runs_summary_and_a_divergence_by_its_exit_status(tmp_path):
    summary = run_train(config(), tmp_path / "run", nproc=1, log=tmp_path / "run.log", recipe=RECIPE)
    assert isinstance(summary, RunSummary) and summary.steps == 8 and not summary.diverged
    assert summary == RunSummary.read(tmp_path / "run")
    written = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == written  # what the run ran

    diverged = run_train(config(*DIVERGES), tmp_path / "nan", nproc=1, log=tmp_path / "nan.log", report_divergence=True)
    assert diverged.diverged and diverged.log == str(tmp_path / "nan.log") and diverged.steps is None
    assert "NonFiniteGradient" in (tmp_path / "nan.log").read_text().strip().splitlines()[-1]

    with pytest.raises(RunFailed) as failed:  # not asked for: a divergence is a failure like any other
        run_train(config(*DIVERGES), tmp_path / "nan2", nproc=1)
    assert failed.value.returncode == EXIT_FAILED and "NonFiniteGradient" in failed.value.output
    assert failed.value.log is None  # its stderr was kept instead


def test_a_run_directory_started_with_set_lines_continues_under_the_launcher(tmp_path):
    # as the sweep made a run: the recipe's config, renamed; the recipe's name and every key went on the command line
    cfg = dataclasses.replace(config(), recipe="sweep-goyal-b64-s0")
    run = tmp_path / "goyal" / "b000064_s0"
    args = ["train", "--nproc", "1", "--out", run, "--recipe", RECIPE]
    proc = clirun.run(*args, *[x for item in clirun.set_items(cfg) for x in ("--set", item)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = json.loads((run / "config.json").read_text())
    assert list_checkpoints(run) and before["recipe"] == RECIPE

    # the launcher passes --resume auto for a run directory with checkpoints: the checkpoint's config
    # must be this one (another is refused with exit status 2), and the finished run stays finished
    summary = run_train(cfg, run, nproc=1, log=tmp_path / "again.log", recipe=RECIPE)
    assert summary.steps == 8 and json.loads((run / "config.json").read_text()) == before
    with pytest.raises(RunFailed) as other:
        run_train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=7)), run, nproc=1, recipe=RECIPE)
    assert other.value.returncode == EXIT_BAD_INPUT and "another config" in other.value.output
