"""Checkpoint files: checksum, truncation and corruption detection, fallback to the previous one,
pickled objects refused, readable by plain ``torch.load``, the user's umask, format-2 files still
loading, and exported weights loading into plain torchvision models."""

import hashlib
import io
import json
import logging
import os
import subprocess

import pytest
import torch
import torchvision

from largebatch.nn import build_model, configure_bn
from largebatch.train.checkpoint import (
    MAGIC,
    CheckpointError,
    checksum_path,
    export_weights,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def payload(step):
    return {"config": {"recipe": "test"}, "model": {"w": torch.full((3,), float(step))}, "train_state": {"step": step}}


def test_round_trip_and_keep(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, payload(step), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_step00000002.pt", "ckpt_step00000003.pt"]
    newest = list_checkpoints(tmp_path)[-1]
    ckpt = load_checkpoint(newest)
    assert torch.equal(ckpt["model"]["w"], torch.full((3,), 3.0)) and ckpt["format"] == 3
    assert not list((tmp_path / "checkpoints").glob(".*tmp"))  # no temporary file left behind
    # other tools read it: plain torch.load, and sha256sum -c on the checksum file; deleted ones take theirs along
    plain = torch.load(newest, weights_only=True)
    assert torch.equal(plain["model"]["w"], ckpt["model"]["w"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "ckpt_step00000002.pt",
        "ckpt_step00000002.pt.sha256",
        "ckpt_step00000003.pt",
        "ckpt_step00000003.pt.sha256",
    ]
    check = subprocess.run(
        ["sha256sum", "-c", checksum_path(newest).name], cwd=newest.parent, capture_output=True, text=True
    )
    assert check.returncode == 0 and "OK" in check.stdout


def test_files_take_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path, 1, payload(1), keep=2)
        weights = export_weights(tmp_path / "model_final.pt", {"w": torch.ones(2)}, {"classes": ["a", "b"]})
    finally:
        os.umask(old)
    for p in (path, checksum_path(path), weights, weights.with_suffix(".json")):
        assert (p.stat().st_mode & 0o777) == 0o644, p
    assert json.loads(weights.with_suffix(".json").read_text()) == {"classes": ["a", "b"]}


def test_format_2_checkpoints_still_load_and_a_lone_file_is_named(tmp_path):
    buffer = io.BytesIO()
    torch.save({"format": 2, **payload(7)}, buffer)
    blob = buffer.getvalue()
    legacy = tmp_path / "ckpt_step00000007.pt"
    legacy.write_bytes(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
    assert load_checkpoint(legacy)["train_state"]["step"] == 7
    lone = tmp_path / "lone.pt"
    torch.save({"format": 3, **payload(1)}, lone)
    with pytest.raises(CheckpointError, match="no checksum file lone.pt.sha256"):
        load_checkpoint(lone)
    checksum_path(lone).write_text(hashlib.sha256(lone.read_bytes()).hexdigest() + "  lone.pt\n")
    assert load_checkpoint(lone)["train_state"]["step"] == 1


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_damaged_newest_is_detected_and_the_previous_one_used(tmp_path, damage, caplog):
    save_checkpoint(tmp_path, 1, payload(1), keep=3)
    newest = save_checkpoint(tmp_path, 2, payload(2), keep=3)
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 100]
    elif damage == "flip":
        data[-50] ^= 0xFF
    else:
        data = b""
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt or truncated|not a largebatch checkpoint"):
        load_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        path, ckpt = latest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt_step00000001.pt" and ckpt["train_state"]["step"] == 1
    assert "falling back to the previous checkpoint" in caplog.text and newest.name in caplog.text


def test_no_valid_checkpoint(tmp_path):
    assert latest_valid_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt_step00000005.pt").write_bytes(b"junk")
    assert latest_valid_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "missing.pt")


def test_exported_weights_load_into_plain_torchvision_models(tmp_path):
    model = build_model("resnet18", num_classes=7, in_channels=3, bn_batch_size=2)
    configure_bn(model, statistics="last_batch", variance_averaging="pooled")  # extra BN state is not exported
    model(torch.randn(4, 3, 32, 32))
    path = export_weights(tmp_path / "model_final.pt", model.state_dict())
    plain = torchvision.models.resnet18(num_classes=7)
    plain.load_state_dict(torch.load(path, weights_only=True))  # strict
    plain.eval(), model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(plain(x), model(x), atol=1e-6)
