"""``largebatch data check`` on a generated ImageNet-layout folder with every kind of odd and bad
file real ImageNet (or a bad copy of it) contains: each planted file is found and classified."""

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from largebatch.data.check import check_dataset, check_file

pytestmark = pytest.mark.e2e


def jpeg(mode="RGB", size=(40, 30)):
    buffer = io.BytesIO()
    Image.new(mode, size, 120 if mode == "L" else (200, 30, 30) if mode == "RGB" else (10, 20, 30, 40)).save(
        buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png():
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (0, 90, 0)).save(buffer, "PNG")
    return buffer.getvalue()


PLANTED = {
    "train/n01/zero.JPEG": (b"", "empty"),
    "train/n01/truncated.JPEG": (jpeg()[:300], "corrupt"),
    "train/n02/notes.JPEG": (b"this is not an image", "not_an_image"),
    "train/n02/cmyk.JPEG": (jpeg("CMYK"), "cmyk"),
    "val/n01/gray.JPEG": (jpeg("L"), "grayscale"),
    "val/n02/png_inside.JPEG": (png(), "png_as_jpeg"),
}


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(3):
                (d / f"{wnid}_{i}.JPEG").write_bytes(jpeg())
    for rel, (data, _) in PLANTED.items():
        (root / rel).write_bytes(data)
    (root / "LOC_val_solution.csv").write_text("not checked\n")
    return root


def test_every_planted_file_is_found_and_classified(dataset):
    report = check_dataset(str(dataset), workers=1, progress=False)
    assert report.files == 12 + len(PLANTED)
    found = {r["path"][len(str(dataset)) + 1:]: r["kind"] for r in report.bad + report.odd}
    assert found == {rel: kind for rel, (_, kind) in PLANTED.items()}
    assert report.counts["ok"] == 12 and not report.ok
    assert check_file(str(dataset / "train/n01/n01_0.JPEG")).kind == "ok"


def test_cli_exit_status_and_report(dataset, tmp_path):
    report_path = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "largebatch", "data", "check", str(dataset), "--report",
                           str(report_path), "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "BAD  empty" in proc.stdout and "odd  cmyk" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and len(report["bad"]) == 3 and len(report["odd"]) == 3
    for rel in ("train/n01/zero.JPEG", "train/n01/truncated.JPEG", "train/n02/notes.JPEG"):
        (dataset / rel).unlink()
    proc = subprocess.run([sys.executable, "-m", "largebatch", "data", "check", str(dataset)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "odd  png_as_jpeg" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "largebatch", "data", "check", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "is not a directory" in proc.stderr
