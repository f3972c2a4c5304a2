"""RunSummary is the schema of summary.json: what a run writes reads back unchanged."""

import json

import pytest

from largebatch.summary import RunSummary, read_summary


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
