"""The in-process batch decoders (``data.imagefolder.decode_on=device``: torchvision.io on the training device;
``data.imagefolder.decoder=dali``: NVIDIA DALI, run here on its CPU operators) and shards read from a URL through
fsspec (an HTTP server with byte ranges, as object storage serves them), on generated
ImageNet-layout folders with the odd and bad files real ImageNet copies hold."""

import functools
import io
import json
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

import clirun
from largebatch.data.imagefolder import BadImageError, ImageFolderData
from largebatch.data.samplers import GlobalBatchSampler
from largebatch.data.shards import prepare

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities")]

VARIANTS = {"device": dict(decoder="torchvision", decode_on="device"), "dali": dict(decoder="dali")}


def smooth_jpeg(path, seed, mode="RGB"):
    g = torch.Generator().manual_seed(seed)
    image = torch.nn.functional.interpolate(torch.rand(1, 3, 5, 7, generator=g), size=(45, 63), mode="bilinear")[0]
    Image.fromarray((image * 255).to(torch.uint8).permute(1, 2, 0).numpy()).convert(mode).save(path, "JPEG", quality=95)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """6 train and 3 val images per class of 2; val holds a CMYK JPEG, a grayscale one and a PNG
    under a .JPEG name (odd but valid: decoded to RGB)."""
    root = tmp_path_factory.mktemp("imagenet")
    for split, count in (("train", 6), ("val", 3)):
        for c, wnid in enumerate(("n01", "n02")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(count):
                smooth_jpeg(root / split / wnid / f"{wnid}_{i}.JPEG", 100 * c + i + (50 if split == "val" else 0))
    smooth_jpeg(root / "val/n01/cmyk.JPEG", 7, "CMYK")
    smooth_jpeg(root / "val/n02/gray.JPEG", 8, "L")
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (0, 90, 0)).save(buffer, "PNG")
    (root / "val/n02/png_inside.JPEG").write_bytes(buffer.getvalue())
    return root


def data_for(root, variant=None, *, augment=False, policy="fail", workers=1):
    return ImageFolderData(
        str(root),
        image_size_px=24,
        augment=augment,
        loader_workers=workers,
        train_subset=0,
        test_subset=0,
        device=torch.device("cpu"),
        bad_file_policy=policy,
        **(VARIANTS[variant] if variant else {}),
    )


def eval_all(data):
    batches = list(data.eval_batches(world_size=1, rank=0, batch_size=4))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def train_all(data, seed=1, batch=4):
    sampler = GlobalBatchSampler(data.num_train, batch, world_size=1, rank=0, seed=seed)
    sampler.set_epoch(0)
    return [(x, y) for x, y in data.train_batches(sampler, seed=seed)]


@pytest.mark.parametrize("variant", ["device", "dali"])
def test_batch_decoders_give_the_worker_paths_evaluation_images(folder, variant):
    """Evaluation (resize 256/224 + centre crop) of every val image, odd ones included: torchvision
    on the device is bitwise the worker path; DALI's resampling differs by rounding only."""
    want_x, want_y = eval_all(data_for(folder))
    got_x, got_y = eval_all(data_for(folder, variant))
    assert got_x.shape == want_x.shape == (9, 3, 24, 24) and torch.equal(got_y, want_y)
    if variant == "device":
        assert torch.equal(got_x, want_x)
    else:  # DALI resamples with its own filter: about 5 pixel levels apart on these 45x63 images
        # (normalized units: one level is about 0.017); another image is 7 to 18 times farther
        per_image = (got_x - want_x).abs().mean(dim=(1, 2, 3))
        assert per_image.max() < 0.15
        assert ((torch.roll(want_x, 1, 0) - want_x).abs().mean(dim=(1, 2, 3)) > 5 * per_image).all()


@pytest.mark.parametrize("variant", ["device", "dali"])
def test_training_crops_are_random_and_repeat_with_the_seed(folder, variant):
    data = data_for(folder, variant, augment=True)
    first, again, other = train_all(data), train_all(data), train_all(data, seed=2)
    assert [x.shape for x, _ in first] == [(4, 3, 24, 24)] * 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    plain = eval_all(data_for(folder))[0]  # the crops differ from the centre crops
    assert not any(torch.equal(x, plain[: len(x)]) for x, _ in first)
    # labels follow the sampler's indices exactly as on the DataLoader path
    assert [y.tolist() for _, y in first] == [y.tolist() for _, y in train_all(data_for(folder, augment=True))]


@pytest.mark.parametrize("variant", ["device", "dali"])
def test_broken_files_fail_or_are_skipped_and_reported(tmp_path, variant):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c, wnid in enumerate(("n01", "n02")):
            (root / split / wnid).mkdir(parents=True)
            for i in range(3):
                smooth_jpeg(root / split / wnid / f"{i}.JPEG", 10 * c + i)
    good = (root / "train/n01/0.JPEG").read_bytes()
    planted = {
        "train/n01/a_zero.JPEG": b"",
        "train/n01/b_truncated.JPEG": good[:200],
        "train/n02/a_notes.JPEG": b"this is not an image",
    }
    for rel, blob in planted.items():
        (root / rel).write_bytes(blob)
    with pytest.raises(BadImageError, match="cannot decode .*(a_zero|b_truncated|a_notes).JPEG.*bad_file_policy=skip"):
        train_all(data_for(root, variant), batch=9)
    data = data_for(root, variant, policy="skip")
    ((x, y),) = train_all(data, batch=9)  # one step of 9 of the 9 files: every file is read
    assert x.shape == (9, 3, 24, 24) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert sorted(line.split("\t")[0][len(str(root)) + 1 :] for line in data.bad_files) == sorted(planted)


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """A static file server that answers byte-range requests (206), as object stores do."""

    def send_head(self):
        wanted = self.headers.get("Range", "")
        if not wanted.startswith("bytes="):
            return super().send_head()
        try:
            data = open(self.translate_path(self.path), "rb").read()
        except OSError:
            self.send_error(404)
            return None
        start, end = wanted[len("bytes=") :].split("-")
        start, end = int(start), min(int(end) if end else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        return io.BytesIO(data[start : end + 1])

    def log_message(self, *args):
        pass


@pytest.fixture()
def served_shards(folder, tmp_path):
    shards = tmp_path / "shards"
    prepare(str(folder), str(shards), max_side_px=40, progress=False, workers=1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RangeRequestHandler, directory=str(shards)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield shards, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.mark.parametrize("variant,workers", [(None, 2), ("device", 2), ("dali", 2)])
def test_shards_from_a_url_give_the_local_shards_batches(served_shards, variant, workers):
    """The same sample order, labels and pixels from the HTTP server as from the directory, through
    DataLoader workers (batched range requests in __getitems__) and through the batch decoders."""
    local, url = served_shards
    for augment in (False, True):
        remote_batches = train_all(data_for(url, variant, augment=augment, workers=workers))
        local_batches = train_all(data_for(local, variant, augment=augment, workers=workers))
        assert len(remote_batches) == 3
        for (rx, ry), (lx, ly) in zip(remote_batches, local_batches):
            assert torch.equal(rx, lx) and torch.equal(ry, ly)
    with pytest.raises(FileNotFoundError, match="holds no largebatch-shards.json"):
        data_for(url + "/nothing-here")


def test_cli_trains_from_shards_over_http_with_dali_and_on_the_folder_decoding_on_the_device(
    served_shards, folder, tmp_path
):
    _, url = served_shards
    common = [
        "--set",
        "data.name=imagefolder",
        "--set",
        "model.name=resnet18",
        "--set",
        "data.image_size_px=24",
        "--set",
        "data.imagefolder.loader_workers=1",
        "--set",
        "train.epochs=1",
        "--set",
        "train.global_batch_size=8",
        "--set",
        "train.bn.batch_size=4",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "schedule.decay_epochs=[]",
    ]
    runs = {
        "dali_http": ["--nproc", "2", "--set", f"data.root={url}", "--set", "data.imagefolder.decoder=dali"],
        "device_folder": ["--set", f"data.root={folder}", "--set", "data.imagefolder.decode_on=device"],
    }
    for name, extra in runs.items():
        out = tmp_path / name
        proc = clirun.subprocess_run(
            [sys.executable, "-m", "largebatch", "train", *common, *extra, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["steps"] == 1  # 12 images // 8
    proc = clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", "train", *common, "--set", f"data.root={url}/missing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "holds no largebatch-shards.json" in proc.stderr
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            *common,
            "--set",
            f"data.root={folder}",
            "--set",
            "data.imagefolder.decoder=pil",
            "--set",
            "data.imagefolder.decode_on=device",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "data.imagefolder.decode_on" in proc.stderr
