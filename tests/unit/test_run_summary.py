"""RunSummary is the schema of summary.json: what a run writes reads back unchanged."""

import json
from types import SimpleNamespace

import pytest
import torch

from largebatch.dist.env import DistEnv
from largebatch.plan import resolve_stages
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.summary import RunSummary, read_summary
from largebatch.train.outputs import run_summary
from largebatch.train.precision import choose_precision
from largebatch.train.state import TrainState


def test_a_written_summary_reads_back_key_for_key_and_unknown_keys_survive(tmp_path):
    data = {f: None for f in RunSummary.__dataclass_fields__ if f not in ("diverged", "log", "extra")}
    data.update(recipe="r", top1=91.5, steps=120, batch_stages=[{"start_epoch": 0, "global_batch_size": 512}])
    data["from_a_later_version"] = {"x": 1}
    (tmp_path / "summary.json").write_text(json.dumps(data, indent=2) + "\n")
    s = RunSummary.read(tmp_path)
    assert (s.recipe, s.top1, s.steps) == ("r", 91.5, 120)
    assert s.extra == {"from_a_later_version": {"x": 1}}
    out = tmp_path / "again"
    out.mkdir()
    s.write(out)
    assert (out / "summary.json").read_text() == (tmp_path / "summary.json").read_text()


def test_an_older_summary_reads_with_defaults_and_a_diverged_one_keeps_its_shape(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"top1": 80.0, "images_per_s": 900.0}))
    s = RunSummary.read(tmp_path)
    assert s.images_per_s == 900.0 and s.val_top1 is None and not s.diverged
    d = RunSummary(diverged=True, log="train.log")
    assert d.to_dict() == {"diverged": True, "log": "train.log"}
    assert RunSummary.from_dict(d.to_dict()).diverged


def test_missing_or_malformed_files(tmp_path):
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a JSON object"):
        RunSummary.read(tmp_path)


def test_the_worker_writes_the_keys_it_always_wrote_in_their_order(tmp_path):
    cfg = get_recipe(DEFAULT_RECIPE)
    state = TrainState(step=10, images_seen=5120, step_time_s=2.0, top1=90.0, best_top1=91.0)
    trainer = SimpleNamespace(state=state, stages=resolve_stages(cfg, 2), fit_started_unix_s=1.0)
    env = DistEnv(0, 2, 0, 2, torch.device("cpu"), "gloo")
    summary = run_summary(cfg, trainer, env, choose_precision("fp32", env.device), {"dist_setup_s": 0.5}, 0, tmp_path)
    keys = """recipe top1 best_top1 epochs steps global_batch_size bn_batch_size simulated_workers world_size peak_lr
    bn_statistics batch_stages images_per_s wall_s eval_s checkpoint_s target_top1 time_to_target_s val_top1
    best_val_top1 val_size val_target_top1 steps_to_val_target images_to_val_target stopped_at_target
    stopped_at_budget init_from precision_requested precision precision_reason startup_s train_started_unix_s
    skipped_steps bad_files run_dir""".split()
    assert list(summary.to_dict()) == keys  # the order of the dict the worker wrote before RunSummary
    assert summary.images_per_s == 2560.0 and summary.world_size == 2 and summary.run_dir == str(tmp_path)
    assert RunSummary.read(summary.write(tmp_path).parent) == summary
