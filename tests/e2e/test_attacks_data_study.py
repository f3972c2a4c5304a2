"""Adversarial inputs to the data, study and simulate commands: each was a traceback or a wrong exit
status before it was fixed. A corrupt JPEG met by DataLoader workers, Optuna storages that are not
studies (random bytes, another program's SQLite database, an unknown URL scheme, a driver not
installed), report and shard paths that cannot be written, a GPU count past any cluster, and the
Fashion-MNIST decompression cache, which grew by an entry per touched source or failed attempt."""

import gzip
import hashlib
import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest
from PIL import Image

import clirun

pytestmark = pytest.mark.e2e


def largebatch(*args, cwd, env=None, timeout=120):
    return clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", *[str(a) for a in args]],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def one_line_error(proc, code: int, *fragments: str) -> str:
    """The single non-empty stderr line of a command that failed with ``code``, naming ``fragments``."""
    lines = error_lines(proc.stderr)
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert all(f in lines[0] for f in fragments), lines[0]
    return lines[0]


def jpeg(colour, size=(36, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def tiny_imagenet(root: Path, per_class: int = 8) -> None:
    for split, count in (("train", per_class), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02")):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(count):
                (d / f"{wnid}_{i}.JPEG").write_bytes(jpeg((200 * (c == 0), 20 * i, 200 * (c == 1))))


# --- 1. a corrupt JPEG met by DataLoader workers ------------------------------------------------


@pytest.mark.parametrize("nproc", [1, 2])
def test_corrupt_jpeg_in_loader_workers_is_one_line_naming_the_file(tmp_path, nproc):
    """bad_file_policy=fail with loader workers: torch re-raised the worker's error with its whole
    'Original Traceback' (about 16 lines) under 2 training workers, and without the file's name
    under one; now one error line naming the file, the traceback in train.log."""
    root = tmp_path / "imagenet"
    tiny_imagenet(root)
    bad = root / "train" / "n01" / "n01_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated: PIL and libjpeg cannot decode it
    out = tmp_path / "run"
    tiny = clirun.sets(
        "data.name=imagefolder",
        f"data.root={root}",
        "model.name=resnet18",
        "data.image_size_px=32",
        "data.imagefolder.loader_workers=2",
        "data.imagefolder.bad_file_policy=fail",
        "train.epochs=1",
        "train.global_batch_size=16",
        "train.bn.batch_size=8",
        "schedule.warmup_epochs=0",
        "schedule.decay_epochs=[]",
    )
    proc = largebatch("train", "--nproc", nproc, *tiny, "--out", out, cwd=tmp_path, timeout=300)
    errors = [line for line in error_lines(proc.stderr) if line.startswith("largebatch: error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(errors) == 1 and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]
    assert f"cannot decode {bad}" in errors[0] and "bad_file_policy=skip" in errors[0], errors[0]
    assert not any(line[:1].isspace() for line in error_lines(proc.stderr)), proc.stderr  # no traceback frame
    log = (out / "train.log").read_text()
    assert "Traceback" in log and str(bad) in log  # the full story stays in the run's log


# --- 2. Optuna storages that cannot be used -----------------------------------------------------


def _storage(kind: str, tmp_path: Path) -> tuple[str, Path | None, str]:
    """(URL, the file it names, what the message must say)."""
    if kind == "corrupt_sqlite":
        path = tmp_path / "random.db"
        path.write_bytes(bytes(range(256)) * 16)
        return f"sqlite:///{path}", path, "not a readable SQLite database"
    if kind == "other_schema":
        path = tmp_path / "inventory.db"
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE parts (name TEXT, count INTEGER)")
        db.execute("INSERT INTO parts VALUES ('bolt', 3)")
        db.commit()
        db.close()
        return f"sqlite:///{path}", path, "another program (tables parts)"
    if kind == "unknown_scheme":
        return "notaurl://x", None, "unknown database 'notaurl'"
    if kind == "no_driver":
        return "mysql://u:secret@localhost/db", None, "driver 'MySQLdb' is not installed; pip install 'mysqlclient'"
    raise AssertionError(kind)


@pytest.mark.parametrize("command", ["sweep", "study-report"])
@pytest.mark.parametrize("kind", ["corrupt_sqlite", "other_schema", "unknown_scheme", "no_driver"])
def test_a_storage_that_is_not_a_study_is_one_line_before_any_trial(tmp_path, monkeypatch, command, kind):
    if kind == "no_driver":  # the forked command cannot import the driver, installed or not
        monkeypatch.setitem(sys.modules, "MySQLdb", None)
    url, path, says = _storage(kind, tmp_path)
    before = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
    out = tmp_path / "out"
    if command == "sweep":
        args = ["sweep", "--tune", "--storage", url, "--methods", "lars", "--batch-sizes", "256", "--epochs", "1"]
        proc = largebatch(*args, "--trials", "1", "--out", out, cwd=tmp_path)
    else:
        proc = largebatch("study-report", url, "--out", out, cwd=tmp_path)
    shown = url.replace(":secret@", ":***@")
    line = one_line_error(proc, 2, shown, says)
    assert "secret" not in line  # the password is not printed
    assert not out.exists()  # refused before any trial ran (or any report was written)
    if path:  # the user's file is neither changed nor removed
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before


# --- 3. report and shard paths that cannot be written -------------------------------------------


@pytest.mark.parametrize("where", ["missing_folder", "under_a_file"])
def test_data_check_report_path_that_cannot_be_written(tmp_path, where):
    root = tmp_path / "imagenet"
    tiny_imagenet(root, per_class=2)
    (tmp_path / "afile").write_text("x")
    report = tmp_path / ("nope" if where == "missing_folder" else "afile") / "r.json"
    proc = largebatch("data", "check", root, "--report", report, "--workers", "1", cwd=tmp_path)
    one_line_error(proc, 2, f"--report {report}", "give a writable path")
    assert proc.stdout == ""  # refused before any file was decoded


def test_data_prepare_destination_under_a_file(tmp_path):
    src = tmp_path / "imagenet"
    tiny_imagenet(src, per_class=2)
    (tmp_path / "afile").write_text("x")
    dst = tmp_path / "afile" / "shards"
    proc = largebatch("data", "prepare", src, dst, "--workers", "1", cwd=tmp_path)
    one_line_error(proc, 2, f"DST {dst}", f"{tmp_path / 'afile'} is not a folder", "give a writable folder")
    assert proc.stdout == "" and (tmp_path / "afile").read_text() == "x"


# --- 4. simulate: GPU counts past any cluster ---------------------------------------------------


def test_simulate_refuses_gpu_counts_past_any_cluster_and_keeps_columns_apart(tmp_path):
    proc = largebatch("simulate", "--gpus", "1000000000000", cwd=tmp_path)
    one_line_error(proc, 2, "--gpus 1000000000000", "1 to 10,000,000")
    assert proc.stdout == ""
    proc = largebatch("simulate", "--gpus", "10000000", cwd=tmp_path)  # the largest accepted
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    assert rows[0].split()[:2] == ["algorithm", "allreduce_ms"]
    assert all(len(row.split()) == 8 for row in rows[1:]), proc.stdout  # 7 numbers and the NCCL choice


# --- 5. the Fashion-MNIST cache stays bounded ---------------------------------------------------


def _idx(magic: int, dims: tuple[int, ...], body: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + body


def tiny_fashion_mnist(folder: Path) -> Path:
    """The four IDX files, gzipped, with 6 training and 4 test images of 28x28."""
    folder.mkdir(parents=True)
    for split, n in (("train", 6), ("t10k", 4)):
        images = _idx(0x0803, (n, 28, 28), bytes(i % 251 for i in range(n * 784)))
        labels = _idx(0x0801, (n,), bytes(i % 10 for i in range(n)))
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(images))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    return folder


def entries(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("fashion-mnist-"))


def test_fashion_mnist_cache_stays_bounded(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    from largebatch.data.fashion_mnist import SOURCES_FILE, load_fashion_mnist, prepare_files

    cache = tmp_path / "cache"
    monkeypatch.setenv("LARGEBATCH_CACHE", str(cache))
    cache.mkdir()
    decoy = cache / "fashion-mnist-notours"  # no record of its sources: never touched
    decoy.mkdir()
    (decoy / "keep.txt").write_text("mine")
    src = tiny_fashion_mnist(tmp_path / "fmnist")

    first = prepare_files(str(src))
    assert entries(cache) == sorted([first.name, decoy.name])
    assert json.loads((first / SOURCES_FILE).read_text()) == sorted(str(p) for p in src.iterdir())
    for step in range(3):  # touched (or re-copied) sources: a new entry replaces the old one
        label_file = src / "t10k-labels-idx1-ubyte.gz"
        os.utime(label_file, ns=(label_file.stat().st_atime_ns, label_file.stat().st_mtime_ns + 10**9))
        newest = prepare_files(str(src))
        assert newest != first and entries(cache) == sorted([newest.name, decoy.name]), step
        first = newest
    assert load_fashion_mnist(str(src))[0].shape == (6, 1, 28, 28)
    assert entries(cache) == sorted([first.name, decoy.name])

    other = prepare_files(str(tiny_fashion_mnist(tmp_path / "copy")))  # another source: its own entry
    assert entries(cache) == sorted([first.name, other.name, decoy.name])

    # an entry another process holds (writing or reading it) is left alone
    held = os.open(first, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_SH)
    try:
        os.utime(src / "train-images-idx3-ubyte.gz")
        newest = prepare_files(str(src))
        assert first.is_dir() and newest.is_dir()
    finally:
        os.close(held)
    os.utime(src / "train-images-idx3-ubyte.gz")
    last = prepare_files(str(src))  # the next one removes both older entries of these sources
    assert entries(cache) == sorted([last.name, other.name, decoy.name])

    # a failed attempt leaves no entry behind, and does not cost the good entries
    broken = tiny_fashion_mnist(tmp_path / "broken")
    blob = (broken / "train-images-idx3-ubyte.gz").read_bytes()
    (broken / "train-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    for _ in range(2):
        with pytest.raises(ValueError, match="cannot be read as gzip"):
            prepare_files(str(broken))
        os.utime(broken / "train-images-idx3-ubyte.gz")
    assert entries(cache) == sorted([last.name, other.name, decoy.name])
    assert (decoy / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "cache", "copy", "fmnist"]
