"""The study's launcher (largebatch.study.launch) without training: the config file it writes makes
the run that ``--recipe NAME`` with every key as ``--set`` made before (the same config and hash, so
run directories of either version resume under the other), and a non-finite stop has its own exit
status only where the launcher asks for it. One training-set size (largebatch.plan.train_images)."""

import dataclasses
import json
from pathlib import Path

import pytest

import clirun
from largebatch.api import load_config
from largebatch.cli.train import _failure_status
from largebatch.config import config_hash, to_dict
from largebatch.dist.launch import WorkerFailed
from largebatch.errors import DIVERGED_STATUS_ENV, EXIT_DIVERGED, EXIT_FAILED
from largebatch.plan import ASSUMED_TRAIN_IMAGES, train_images
from largebatch.recipes import get_recipe
from largebatch.study.branch_runs import branch_overrides
from largebatch.study.launch import CONFIG_FILE, launch_config
from largebatch.study.sweep import METHODS, run_config
from largebatch.study.tune import TuneSpec, trial_config


def study_configs():
    subset = ["data.train_subset=3000"]
    spec = TuneSpec(out=Path("x"), methods=["lamb"], batch_sizes=[256], epochs=3, trials=1, val_size=400)
    yield "mikami", run_config("mikami", 512, 1, 6, subset)  # batch stages: a list of sections
    yield "lamb", trial_config(spec, "lamb", 256, ["optim.base_lr=0.0123456789012345", "schedule.warmup_epochs=1e-05"])
    ref = run_config("goyal", 128, 0, 2, subset)
    branch = branch_overrides(2600, Path("/runs/ref/checkpoints/ckpt_step00000012.pt"), 64, 0.0731, 1024, 400, seed=1)
    yield "goyal", load_config(ref, [*branch, "train.threads_per_worker=1"])  # a branch of critical-batch


@pytest.mark.parametrize("method_and_cfg", list(study_configs()), ids=lambda mc: mc[0])
def test_the_config_file_makes_the_run_the_set_lines_made(tmp_path, method_and_cfg):
    method, cfg = method_and_cfg
    recipe = METHODS[method].recipe
    before = load_config(recipe, clirun.set_items(cfg))  # `largebatch train --recipe NAME --set ...`
    path = tmp_path / CONFIG_FILE
    path.write_text(json.dumps(launch_config(cfg, recipe)))
    now = load_config(str(path))  # `largebatch train --config FILE`
    assert to_dict(now) == to_dict(before) and config_hash(now) == config_hash(before)
    named = get_recipe(recipe)
    assert (now.recipe, now.description, now.source) == (named.recipe, named.description, named.source)
    assert launch_config(cfg) == to_dict(cfg)  # without a recipe: the config as it is


def test_a_non_finite_stop_has_its_own_exit_status_only_where_asked(monkeypatch):
    diverged = [WorkerFailed("w", 1, "error", "NonFiniteGradient"), WorkerFailed("w", 1, "error", "FloatingPointError")]
    other = [WorkerFailed("w", 1, "error", "RuntimeError"), WorkerFailed("w", -9, "died")]
    monkeypatch.delenv(DIVERGED_STATUS_ENV, raising=False)
    assert [_failure_status(e) for e in diverged + other] == [EXIT_FAILED] * 4
    monkeypatch.setenv(DIVERGED_STATUS_ENV, "1")
    assert [_failure_status(e) for e in diverged + other] == [EXIT_DIVERGED] * 2 + [EXIT_FAILED] * 2
    assert EXIT_DIVERGED not in (0, 1, 2, 75, 130)


def test_the_training_set_is_the_data_sets_cut_to_the_subset_less_the_validation_split():
    cfg = get_recipe("goyal2017_fashion_mnist_28px")

    def with_data(**kw):
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **kw))

    assert train_images(cfg) == 60_000
    assert train_images(with_data(val_size=5000)) == 55_000
    assert train_images(with_data(train_subset=15_000, val_size=5000)) == 10_000  # subset first, then the split
    assert train_images(with_data(train_subset=2000), val_size=400) == 1600
    synthetic = with_data(name="synthetic", synthetic=dataclasses.replace(cfg.data.synthetic, train_samples=512))
    assert train_images(synthetic) == 512
    assert train_images(with_data(name="imagefolder", train_subset=0)) == ASSUMED_TRAIN_IMAGES
    assert train_images(with_data(name="imagefolder", train_subset=1000)) == 1000
    assert train_images(with_data(train_subset=100, val_size=100)) == 1  # at least 1
