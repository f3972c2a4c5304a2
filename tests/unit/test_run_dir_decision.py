"""The run-directory decision of largebatch.train.rundir, the one both the launcher
(``api.prepare_run``) and rank 0 of the workers apply: fresh, resume or refuse, for every row of its
table, and what only the launcher refuses (an unwritable or locked directory, unreadable checkpoints
under ``--resume auto``, another config's checkpoint)."""

import pytest
import torch

from largebatch.config import ConfigError, apply_overrides, to_dict
from largebatch.dist.env import DistEnv
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train import checkpoint as ckpt_io
from largebatch.train.rundir import agree_on_run_dir, decide_run_dir, open_run_dir
from largebatch.train.runlock import run_dir_lock

CFG = get_recipe(DEFAULT_RECIPE)
ENV = DistEnv(0, 1, 0, 1, torch.device("cpu"), None)


def _checkpoint(run_dir, step, cfg=CFG):
    return ckpt_io.save_checkpoint(run_dir, step, {"config": to_dict(cfg), "model": {"w": torch.ones(2)}}, keep=5)


@pytest.mark.parametrize("before_launch", [True, False], ids=["launcher", "rank0"])
def test_fresh_runs(tmp_path, monkeypatch, before_launch):
    monkeypatch.chdir(tmp_path)
    d = decide_run_dir(CFG, str(tmp_path / "out"), None, before_launch=before_launch)
    assert d.run_dir == tmp_path / "out" and d.fresh and d.checkpoint is None
    d = decide_run_dir(CFG, None, None, before_launch=before_launch)  # a new timestamped directory
    assert d.fresh and d.run_dir.parent.name == "runs" and d.run_dir.name.startswith(f"{CFG.recipe}-")
    d = decide_run_dir(CFG, str(tmp_path / "empty"), "auto", before_launch=before_launch)  # nothing to resume
    assert d.run_dir == tmp_path / "empty" and d.fresh
    d = decide_run_dir(CFG, None, "auto", before_launch=before_launch)  # no runs/<recipe>-* with checkpoints
    assert d.fresh and d.run_dir.parent.name == "runs"


@pytest.mark.parametrize("before_launch", [True, False], ids=["launcher", "rank0"])
def test_resumes(tmp_path, monkeypatch, before_launch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    _checkpoint(out, 1)
    newest = _checkpoint(out, 2)
    d = decide_run_dir(CFG, str(out), "auto", before_launch=before_launch)
    assert (d.run_dir, d.resume_path) == (out, newest) and d.checkpoint["model"]["w"].sum() == 2
    first = ckpt_io.list_checkpoints(out)[0]
    d = decide_run_dir(CFG, None, str(first), before_launch=before_launch)  # a path: in its own run
    assert (d.run_dir, d.resume_path) == (out, first) and not d.fresh
    d = decide_run_dir(CFG, str(tmp_path / "elsewhere"), str(first), before_launch=before_launch)
    assert (d.run_dir, d.resume_path) == (tmp_path / "elsewhere", first)
    runs = tmp_path / "runs" / f"{CFG.recipe}-20260101-000000"
    in_runs = _checkpoint(runs, 7)
    d = decide_run_dir(CFG, None, "auto", before_launch=before_launch)  # the newest run holding one
    assert (d.run_dir.absolute(), d.resume_path.absolute()) == (runs, in_runs)
    newest.write_bytes(b"junk")  # a damaged newest checkpoint: the previous one
    d = decide_run_dir(CFG, str(out), "auto", before_launch=before_launch)
    assert d.resume_path == first


@pytest.mark.parametrize("before_launch", [True, False], ids=["launcher", "rank0"])
def test_refusals_of_both_sides(tmp_path, before_launch):
    out = tmp_path / "out"
    path = _checkpoint(out, 3)
    with pytest.raises(ConfigError, match="already holds checkpoints of a run; pass --resume auto"):
        decide_run_dir(CFG, str(out), None, before_launch=before_launch)
    with pytest.raises(ConfigError, match="no such checkpoint file"):
        decide_run_dir(CFG, str(out), str(tmp_path / "missing.pt"), before_launch=before_launch)
    path.write_bytes(b"junk")
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        decide_run_dir(CFG, str(out), str(path), before_launch=before_launch)


def test_what_only_the_launcher_refuses(tmp_path):
    out = tmp_path / "out"
    other = apply_overrides(CFG, ["train.seed=12345"])
    _checkpoint(out, 3, cfg=other)
    with pytest.raises(ConfigError, match=r"written with another config \(train.seed: checkpoint 12345"):
        decide_run_dir(CFG, str(out), "auto", before_launch=True)
    assert not decide_run_dir(CFG, str(out), "auto").fresh  # the workers check it as the trainer loads it
    ckpt_io.list_checkpoints(out)[0].write_bytes(b"junk")
    with pytest.raises(ConfigError, match="--resume auto: no checkpoint in .* can be read"):
        decide_run_dir(CFG, str(out), "auto", before_launch=True)
    assert decide_run_dir(CFG, str(out), "auto").fresh  # an elastic restart starts from step 0
    with run_dir_lock(tmp_path / "locked"):
        with pytest.raises(ConfigError, match="is in use by another run"):
            decide_run_dir(CFG, str(tmp_path / "locked"), None, before_launch=True)
        assert decide_run_dir(CFG, str(tmp_path / "locked"), None).fresh  # rank 0 runs under the launcher's lock
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        decide_run_dir(CFG, str(tmp_path / "file" / "run"), None, before_launch=True)


def test_rank0_agreement_on_one_process_and_the_stale_clean_up(tmp_path):
    out = tmp_path / "out"
    path = _checkpoint(out, 4)
    d = agree_on_run_dir(CFG, str(out), "auto", ENV)
    assert (d.run_dir, d.resume_path) == (out, path) and d.checkpoint is not None
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        agree_on_run_dir(CFG, str(out), None, ENV)
    stale = out / "checkpoints" / ".ckpt_step00000009.pt.abc.tmp"
    stale.write_bytes(b"")  # an earlier version's temporary file: no owner, so its writer is gone
    open_run_dir(out)
    assert not stale.exists() and path.exists()
