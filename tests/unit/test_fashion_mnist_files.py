"""Damaged Fashion-MNIST files are found before any worker starts, with one line naming the file
(truncated gzip, bytes that are not gzip, a wrong magic number, labels of the wrong length, a
label outside 0-9), and leave nothing behind in the cache; the real files pass and are decompressed
once."""

from __future__ import annotations

import gzip
import os
import shutil
import sys
from pathlib import Path

import pytest

import clirun
from largebatch.config import ConfigError, apply_overrides
from largebatch.data import check_data
from largebatch.data.fashion_mnist import FILES, default_root, prepare_files
from largebatch.recipes import DEFAULT_RECIPE, get_recipe

REAL = Path(default_root())
pytestmark = pytest.mark.skipif(
    not (REAL / "train-labels-idx1-ubyte.gz").is_file(), reason="needs the Fashion-MNIST files (make data)"
)


@pytest.fixture
def copy(tmp_path, monkeypatch):
    monkeypatch.setenv("LARGEBATCH_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "fmnist"
    root.mkdir()
    for name in FILES:
        shutil.copy(REAL / f"{name}.gz", root / f"{name}.gz")
    return root


def _cfg(root):
    return apply_overrides(get_recipe(DEFAULT_RECIPE), [f"data.root={root}"])


def _cache_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())


def _labels(root, name, header_n, body_n):
    raw = gzip.decompress((REAL / f"{name}.gz").read_bytes())
    data = raw[:4] + header_n.to_bytes(4, "big") + raw[8 : 8 + body_n]
    (root / f"{name}.gz").write_bytes(gzip.compress(data))


def test_the_real_files_pass_and_are_decompressed_once(copy, tmp_path):
    check_data(_cfg(copy))
    assert _cache_files(tmp_path) == sorted([*FILES, "sources.json"])  # and the record of the sources
    assert prepare_files(str(copy)) == prepare_files(str(copy))  # the same cache entry


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated_gzip", "train-images-idx3-ubyte.gz: cannot be read as gzip"),
        ("not_gzip", "t10k-images-idx3-ubyte.gz: cannot be read as gzip"),
        ("wrong_magic", "train-labels-idx1-ubyte.gz: not the IDX file train-labels-idx1-ubyte (magic number"),
        ("short_labels", "t10k-labels-idx1-ubyte.gz: 9999 labels for the 10000 images of"),
        ("body_cut", "t10k-labels-idx1-ubyte.gz: 10007 bytes after decompression, expected 10008 for 10000 items"),
        ("bad_label", "train-labels-idx1-ubyte.gz: label 200 at index 12345 is outside Fashion-MNIST's classes 0-9"),
    ],
)
def test_a_damaged_file_is_named_before_any_worker(copy, tmp_path, damage, message):
    if damage == "truncated_gzip":
        blob = (copy / "train-images-idx3-ubyte.gz").read_bytes()
        (copy / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    elif damage == "not_gzip":
        (copy / "t10k-images-idx3-ubyte.gz").write_bytes(b"<html>not found</html>" * 100)
    elif damage == "wrong_magic":
        raw = bytearray(gzip.decompress((REAL / "train-labels-idx1-ubyte.gz").read_bytes()))
        raw[3] = 0x03  # an images magic number on a labels file
        (copy / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    elif damage == "bad_label":  # a valid header and length: this was an IndexError in every worker
        raw = bytearray(gzip.decompress((REAL / "train-labels-idx1-ubyte.gz").read_bytes()))
        raw[8 + 12345] = raw[8 + 50000] = 200
        (copy / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    elif damage == "short_labels":
        _labels(copy, "t10k-labels-idx1-ubyte", 9999, 9999)
    else:
        _labels(copy, "t10k-labels-idx1-ubyte", 10000, 9999)
    with pytest.raises(ConfigError) as err:
        check_data(_cfg(copy))
    assert str(err.value).startswith(f"{copy}/") and message in str(err.value), str(err.value)
    assert not any(name.startswith(".") for name in _cache_files(tmp_path))  # no partial file left
    # a repaired file is taken up on the next run
    shutil.copy(REAL / f"{message.split('.gz')[0]}.gz", copy / f"{message.split('.gz')[0]}.gz")
    check_data(_cfg(copy))


def test_the_cli_says_it_in_one_line(copy, tmp_path):
    (copy / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    proc = clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", "train", "--set", f"data.root={copy}", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LARGEBATCH_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "t10k-images-idx3-ubyte.gz" in proc.stderr
    assert not (tmp_path / "run").exists()
