"""Bad input and damaged run directories found before any worker starts, each with one clear line:
a checkpoint without its config, a directory named like a checkpoint, a newer checkpoint never
deleted by an older step's save, every checkpoint unreadable under --resume auto, stale temporary
files of a killed writer, train.device=cuda without a GPU, the nearest key for a misspelt one,
schedule points after the end of training, and --resume auto finding nothing."""

from __future__ import annotations

import sys

import pytest
import torch

import clirun
from largebatch.api import check_devices, load_config, prepare_run
from largebatch.config import ConfigError, apply_overrides, schedule_warnings, validate
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train.checkpoint import (
    CheckpointError,
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)

SYNTHETIC = [
    "data.name=synthetic",
    "data.synthetic.train_samples=256",
    "data.synthetic.test_samples=64",
    "data.image_size_px=12",
    "train.global_batch_size=64",
    "train.bn.batch_size=16",
    "train.epochs=1",
    "model.width=4",
    "schedule.warmup_epochs=0",
    "schedule.decay_epochs=[]",
]


def _cfg(extra=()):
    return apply_overrides(get_recipe(DEFAULT_RECIPE), SYNTHETIC + list(extra))


def _payload(cfg_dict=None):
    return {"config": cfg_dict or {"recipe": "x"}, "model": {"w": torch.ones(2)}}


def test_a_checkpoint_without_its_config_is_refused_by_name(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"model": {"w": torch.ones(2)}}, keep=2)  # valid header and checksum
    with pytest.raises(CheckpointError, match="no 'config' entry"):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match="ckpt_step00000001.pt is not a largebatch training checkpoint"):
        prepare_run(_cfg(), nproc=1, out=tmp_path, resume=str(path))  # was a KeyError traceback


def test_a_directory_named_like_a_checkpoint_breaks_no_save(tmp_path):
    (checkpoint_dir(tmp_path) / "ckpt_step00000001.pt").mkdir(parents=True)
    assert list_checkpoints(tmp_path) == []
    for step in (2, 3, 4):
        save_checkpoint(tmp_path, step, _payload(), keep=2)  # rotation no longer trips over the folder
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000003.pt", "ckpt_step00000004.pt"]
    (checkpoint_dir(tmp_path) / "ckpt_step00000005.pt").mkdir()
    with pytest.raises(CheckpointError, match="a directory has that name"):
        save_checkpoint(tmp_path, 5, _payload(), keep=2)


def test_a_save_never_deletes_a_newer_checkpoint(tmp_path):
    newer = save_checkpoint(tmp_path, 10, _payload(), keep=1)
    newer.write_bytes(b"damaged")  # e.g. an unreadable newest file that --resume auto skipped
    save_checkpoint(tmp_path, 2, _payload(), keep=1)
    save_checkpoint(tmp_path, 3, _payload(), keep=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000003.pt", "ckpt_step00000010.pt"]


def test_resume_auto_refuses_when_every_checkpoint_is_unreadable(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, _payload(), keep=3).write_bytes(b"\0" * 10)
    with pytest.raises(ConfigError, match=r"no checkpoint in .* can be read \(ckpt_step00000001.pt, ckpt_step00000002"):
        prepare_run(_cfg(), nproc=1, out=tmp_path, resume="auto")
    assert len(list_checkpoints(tmp_path)) == 2  # nothing deleted


def test_stale_temporary_files_are_removed_by_the_cleanup_not_by_prepare_run(tmp_path):
    d = checkpoint_dir(tmp_path)
    d.mkdir(parents=True)
    stale = [d / ".ckpt_step00000003.pt.k2j9x.tmp", d / ".ckpt_step00000003.pt.sha256.a8b.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    keep = d / "notes.tmp"  # not ours
    keep.write_text("mine")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and keep.exists()
    stale[0].write_bytes(b"half")
    prepare_run(_cfg(), nproc=1, out=tmp_path)  # deletes nothing: rank 0 cleans up, under the run's lock
    assert stale[0].exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line_before_any_worker(tmp_path):
    with pytest.raises(ConfigError, match="train.device=cuda, but no CUDA GPU is visible"):
        check_devices(_cfg(["train.device=cuda"]), 2)
    check_devices(_cfg(["train.device=auto"]), 2)  # auto falls back to the CPU
    out = tmp_path / "run"
    proc = clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", "train", "--set", "train.device=cuda", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU is visible" in proc.stderr
    assert not out.exists()


def test_a_misspelt_key_gets_the_nearest_one():
    with pytest.raises(ConfigError, match="did you mean 'train.epochs'"):
        apply_overrides(get_recipe(DEFAULT_RECIPE), ["train.epoch=3"])
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_recipe(DEFAULT_RECIPE), ["zzz.qqq=3"])
    assert "did you mean" not in str(err.value)


def test_schedule_points_after_the_end_are_named():
    step = get_recipe("goyal2017_fashion_mnist_28px")  # step decay at 4.5, 7 and 8.5 of 9 epochs
    assert schedule_warnings(get_recipe(DEFAULT_RECIPE)) == [] and schedule_warnings(step) == []
    lines = schedule_warnings(apply_overrides(step, ["train.epochs=5"]))
    assert lines == [
        "schedule.decay_epochs 7, 8.5 fall at or after the end of training (train.epochs=5): those decays never apply"
    ]
    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), ["train.epochs=2", "schedule.warmup_epochs=3"])
    assert any("ends inside the warmup" in line for line in schedule_warnings(cfg))


def test_resume_auto_says_when_it_finds_nothing(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "largebatch", "train", "--nproc", "1", "--resume", "auto", "--out", str(out)]
    for item in SYNTHETIC[:-1] + ["schedule.name=step", "schedule.decay_epochs=[3]"]:
        args += ["--set", item]
    proc = clirun.subprocess_run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"--resume auto found no checkpoint in {out}; starting from step 0" in proc.stderr
    assert "warning: schedule.decay_epochs 3 fall at or after the end of training" in proc.stderr


PLUGIN_MODULE = """
def net(*, num_classes, in_channels, width=8):
    raise AssertionError("a check must not call the factory")


def data(root, seed):
    raise AssertionError("a check must not call the factory")
"""


@pytest.mark.parametrize(
    "override, fragment",
    [
        (
            "model.name=os:system",
            "model.name='os:system' cannot be called as factory(num_classes=..., in_channels=...)",
        ),
        ("data.name=os:system", "data.name='os:system' cannot be called as factory(root=..., seed=...)"),
        ("model.name=builtins:dict", "model.name='builtins:dict': its signature cannot be read"),
        ("model.name=largebatch_guard_plug:data", "cannot be called as factory(num_classes=..., in_channels=...)"),
    ],
)
def test_a_plugin_that_breaks_the_factory_contract_is_refused_by_validate(tmp_path, monkeypatch, override, fragment):
    """model.name=os:system passed every check and failed in each worker with a TypeError. validate
    runs before any worker of train, eval, sweep and the studies."""
    (tmp_path / "largebatch_guard_plug.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as err:
        validate(_cfg([override]))
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_plugin_that_takes_the_contract_passes_and_builtins_import_nothing(tmp_path, monkeypatch):
    (tmp_path / "largebatch_guard_plug.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    validate(_cfg(["model.name=largebatch_guard_plug:net", "data.name=largebatch_guard_plug:data"]))
    import largebatch.registry

    def no_import(*args):
        raise AssertionError(f"check_plugin{args} called for a built-in name")

    monkeypatch.setattr(largebatch.registry, "check_plugin", no_import)
    validate(_cfg())  # synthetic + resnet_fmnist
    validate(_cfg(["model.name=resnet18", "data.synthetic.channels=3"]))  # a torchvision model


def test_the_cli_refuses_a_plugin_of_the_wrong_shape_in_one_line(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "largebatch", "train", "--nproc", "2", "--out", str(out)]
    for item in [*SYNTHETIC, "model.name=os:system"]:
        args += ["--set", item]
    proc = clirun.subprocess_run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "model.name='os:system' cannot be called" in proc.stderr
    assert not out.exists()  # refused before the run directory, and so before any worker


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("loop.yaml", "a: &a [*a, *a]\n", "a[0] is a recursive YAML alias"),
        ("loop2.yaml", "train: &t {seed: 1, again: *t}\n", "train.again is a recursive YAML alias"),
        ("deep.yaml", "train: " + "[" * 1000 + "]" * 1000 + "\n", "is nested too deeply to be a config"),
        ("deep.json", '{"train": ' + "[" * 5000 + "]" * 5000 + "}", "is nested too deeply to be a config"),
        ("deep300.yaml", "train: {seed: " + "[" * 300 + "]" * 300 + "}\n", "nested more than 32 levels deep"),
        (
            "bomb.yaml",
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
            + "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcde", "bcdef")),
            "too large",
        ),
    ],
)
def test_a_config_file_with_a_recursive_alias_or_deep_nesting_is_one_line(tmp_path, name, text, fragment):
    """These were RecursionError tracebacks (or, for aliases of aliases, a config expanded into memory)."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert msg.startswith(f"--config {str(path)!r}") and fragment in msg and "\n" not in msg, msg
