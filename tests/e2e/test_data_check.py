"""``largebatch data check`` on a generated ImageNet-layout folder with every kind of odd and bad
file real ImageNet (or a bad copy of it) contains: each planted file is found and classified."""

import io
import json
import sys

import pytest
from PIL import Image

import clirun
from largebatch.data.check import check_dataset, check_file

pytestmark = pytest.mark.e2e


def jpeg(mode="RGB", size=(40, 30)):
    buffer = io.BytesIO()
    Image.new(mode, size, 120 if mode == "L" else (200, 30, 30) if mode == "RGB" else (10, 20, 30, 40)).save(
        buffer, "JPEG", quality=90
    )
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
    found = {r["path"][len(str(dataset)) + 1 :]: r["kind"] for r in report.bad + report.odd}
    assert found == {rel: kind for rel, (_, kind) in PLANTED.items()}
    assert report.counts["ok"] == 12 and not report.ok
    assert check_file(str(dataset / "train/n01/n01_0.JPEG")).kind == "ok"


def test_cli_exit_status_and_report(dataset, tmp_path):
    report_path = tmp_path / "report.json"
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "data",
            "check",
            str(dataset),
            "--report",
            str(report_path),
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "BAD  empty" in proc.stdout and "odd  cmyk" in proc.stdout
    report = json.loads(report_path.read_text())
    assert report["ok"] is False and len(report["bad"]) == 3 and len(report["odd"]) == 3
    for rel in ("train/n01/zero.JPEG", "train/n01/truncated.JPEG", "train/n02/notes.JPEG"):
        (dataset / rel).unlink()
    proc = clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", "data", "check", str(dataset)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "odd  png_as_jpeg" in proc.stdout
    proc = clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", "data", "check", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "is not a directory" in proc.stderr


def test_prepare_writes_shards_that_reproduce_the_samples_and_train(tmp_path):
    import tarfile

    import torch
    from torchvision import datasets
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms.v2 import functional as TF

    from largebatch.data.shards import MANIFEST, ShardImages

    src = tmp_path / "imagenet"
    for split, count in (("train", 12), ("val", 4)):
        for c, wnid in enumerate(("n01", "n02")):
            d = src / split / wnid
            d.mkdir(parents=True)
            for i in range(count):
                g = torch.Generator().manual_seed(100 * c + i)
                small = torch.rand(3, 6, 8, generator=g)
                image = torch.nn.functional.interpolate(small[None], size=(60, 80), mode="bilinear")[0]
                Image.fromarray((image * 255).to(torch.uint8).permute(1, 2, 0).numpy()).save(
                    d / f"{wnid}_{i}.JPEG", quality=95
                )
    (src / "train" / "n02" / "broken.JPEG").write_bytes(b"")
    dst = tmp_path / "shards"
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "data",
            "prepare",
            str(src),
            str(dst),
            "--max-side",
            "30",
            "--shard-mb",
            "0.01",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left out (cannot decode)" in proc.stdout and "broken.JPEG" in proc.stdout
    manifest = json.loads((dst / MANIFEST).read_text())
    assert manifest["splits"]["train"]["samples"] == 24 and manifest["splits"]["val"]["samples"] == 8
    assert len(manifest["splits"]["train"]["shards"]) > 1  # split by size
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(dst / shard) as tar:  # plain tars any tool can read
            assert all(m.name.endswith((".jpg", ".cls")) for m in tar.getmembers())
    # Sample i of the shards is file i of the folder (bad file left out), resized and re-encoded.
    folder = [s for s in datasets.ImageFolder(str(src / "train")).samples if not s[0].endswith("broken.JPEG")]
    shards = ShardImages(str(dst), "train", transform=lambda x: x)
    assert [label for _, label in shards.samples] == [label for _, label in folder]
    for i in (0, 7, 23):
        got = shards[i][0]
        original = decode_image(folder[i][0], mode=ImageReadMode.RGB)
        want = TF.resize(original, [30, 40], antialias=True)
        assert got.shape == want.shape == (3, 30, 40)
        other = TF.resize(decode_image(folder[(i + 1) % 24][0], mode=ImageReadMode.RGB), [30, 40], antialias=True)
        same, different = (got.float() - want.float()).abs().mean(), (got.float() - other.float()).abs().mean()
        assert same < 8 and different > 3 * same  # JPEG re-encoding of a 30x40 image at quality 90
    out = tmp_path / "run"
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            "--nproc",
            "2",
            "--set",
            "data.name=imagefolder",
            "--set",
            f"data.root={dst}",
            "--set",
            "model.name=resnet18",
            "--set",
            "data.image_size_px=24",
            "--set",
            "data.imagefolder.loader_workers=1",
            "--set",
            "train.epochs=1",
            "--set",
            "train.global_batch_size=16",
            "--set",
            "train.bn.batch_size=8",
            "--set",
            "schedule.warmup_epochs=0",
            "--set",
            "schedule.decay_epochs=[]",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["world_size"] == 2  # 24 images // 16


@pytest.mark.parametrize("source", ["folder", "shards"])
def test_every_image_once_per_epoch_across_two_workers(tmp_path, source):
    """The image-folder pipeline (and the shards of `data prepare`) with the global-batch sampler on
    2 ranks: within an epoch the two ranks' images are disjoint and together every image but the
    drop-last tail, each exactly once (images identified by their pixels, all distinct)."""
    import torch

    from largebatch.data.imagefolder import ImageFolderData
    from largebatch.data.samplers import GlobalBatchSampler
    from largebatch.data.shards import prepare

    root = tmp_path / "imagenet"
    for split, count in (("train", 11), ("val", 2)):
        for c, wnid in enumerate(("n01", "n02")):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (24, 20), (10 * i + 3, 100 * c + 7, 60)).save(d / f"{i}.JPEG", quality=100)
    if source == "shards":
        prepare(str(root), str(tmp_path / "shards"), max_side_px=64, progress=False, workers=1)
        root = tmp_path / "shards"
    seen = []
    for rank in (0, 1):
        data = ImageFolderData(
            str(root),
            image_size_px=16,
            augment=False,
            loader_workers=0,
            train_subset=0,
            test_subset=0,
            device=torch.device("cpu"),
        )
        sampler = GlobalBatchSampler(data.num_train, 8, world_size=2, rank=rank, seed=3)
        sampler.set_epoch(1)
        keys = []
        for images, labels in data.train_batches(sampler, seed=3):
            keys += [
                (int(y), round(float(x[0].mean()), 2), round(float(x[1].mean()), 2)) for x, y in zip(images, labels)
            ]
        seen.append(keys)
    assert len(seen[0]) == len(seen[1]) == 8 and not set(seen[0]) & set(seen[1])  # 22 images // 8 = 2 steps
    assert len(set(seen[0] + seen[1])) == 16  # each once; 6 dropped (the tail of the epoch's shuffle)
