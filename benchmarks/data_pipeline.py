"""ImageNet-style input pipeline throughput on this machine: our torchvision.io + uint8 pipeline
against torchvision's plain ImageFolder + PIL pipeline, same JPEGs, same augmentation.

Question: how many training images per second does each pipeline deliver on this 2-core machine
(ours from the folder, and from the pre-resized shards of `largebatch data prepare`, short side 256),
what do decoding and augmentation cost per image, and how many CPU cores would a GPU need to be fed
at ResNet-50's training speed? Target (issue 7): at least 2x the baseline.

Method: N generated JPEGs of ImageNet-like size (500x375 and 375x500, quality 90, smooth random
content so that they compress like photographs, about 60-120 KB), 10 classes, in an ImageNet-layout
folder (cached under --data). Each pipeline is `largebatch.data.imagefolder.ImageFolderData` with
`data.imagefolder.decoder=pil` (the baseline: PIL decode, PIL random-resized crop 224 + flip, ToTensor,
Normalize, float batches) or `torchvision` (ours: torchvision.io decode from bytes, v2 crop + flip on
uint8, uint8 batches normalized after the loader), both through a DataLoader with WORKERS processes and
batches of 64; also ours with `data.imagefolder.decode_on=device` (bytes read on WORKERS threads, the batch decoded
in the training process: nvJPEG on a GPU, here the CPU) and `data.imagefolder.decoder=dali` (DALI's CPU operators
on WORKERS threads, when DALI is installed), one pass over the N images including the final normalization to float; the two are
interleaved for ROUNDS rounds; median images/s and the ratio of medians in this one run. The per-image
costs are measured in one process: decode only, then decode + augment.

    python benchmarks/data_pipeline.py [--images 2000] [--workers 2] [--rounds 3] [--data /tmp/largebatch-jpegs]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from _machine import cpu_model

import largebatch
from largebatch.data.imagefolder import ImageFolderData


def make_jpegs(root: Path, count: int) -> None:
    from PIL import Image

    marker = root / f".complete-{count}"
    if marker.exists():
        return
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        w, h = (500, 375) if i % 3 else (375, 500)
        small = torch.rand(3, h // 25, w // 25, generator=g)
        image = torch.nn.functional.interpolate(small[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        image = image + 0.08 * torch.randn(3, h, w, generator=g)
        array = (image.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        d = root / "train" / f"n{i % 10:08d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(d / f"img_{i:05d}.JPEG", quality=90)
        v = root / "val" / f"n{i % 10:08d}"
        v.mkdir(parents=True, exist_ok=True)
    for c in range(10):  # one val image per class, so that the layout is complete
        src = next((root / "train" / f"n{c:08d}").iterdir())
        (root / "val" / f"n{c:08d}" / src.name).write_bytes(src.read_bytes())
    marker.write_text("ok\n")


def one_pass(data: ImageFolderData, batch: int) -> float:
    from largebatch.data.samplers import GlobalBatchSampler

    sampler = GlobalBatchSampler(data.num_train, batch, world_size=1, rank=0, seed=0)
    sampler.set_epoch(0)
    t0 = time.perf_counter()
    n = 0
    for images, _labels in data.train_batches(sampler, seed=0):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 224, 224)
        n += images.shape[0]
    if images.is_cuda:
        torch.cuda.synchronize()  # the last batch's decode has finished
    return n / (time.perf_counter() - t0)


def per_image_costs(root: Path, samples: int = 100) -> dict:
    from PIL import Image
    from torchvision import transforms
    from torchvision.io import ImageReadMode, decode_image
    from torchvision.transforms import v2

    files = sorted((root / "train").rglob("*.JPEG"))[:samples]
    blobs = [f.read_bytes() for f in files]
    torch.set_num_threads(1)
    out = {}
    t0 = time.perf_counter()
    for b in blobs:
        Image.open(io.BytesIO(b)).convert("RGB")
    out["pil_decode_ms"] = 1e3 * (time.perf_counter() - t0) / len(blobs)
    pil_aug = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.2,) * 3),
        ]
    )
    t0 = time.perf_counter()
    for b in blobs:
        pil_aug(Image.open(io.BytesIO(b)).convert("RGB"))
    out["pil_decode_augment_ms"] = 1e3 * (time.perf_counter() - t0) / len(blobs)
    t0 = time.perf_counter()
    for b in blobs:
        decode_image(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB)
    out["torchvision_decode_ms"] = 1e3 * (time.perf_counter() - t0) / len(blobs)
    tv_aug = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip()])
    t0 = time.perf_counter()
    for b in blobs:
        tv_aug(decode_image(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB))
    out["torchvision_decode_augment_ms"] = 1e3 * (time.perf_counter() - t0) / len(blobs)
    out["mean_file_kb"] = sum(len(b) for b in blobs) / len(blobs) / 1024
    return out


def _dali_version() -> str:
    try:
        import nvidia.dali

        return nvidia.dali.__version__
    except ImportError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--data", default="/tmp/largebatch-jpegs")
    ap.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    ap.add_argument(
        "--device",
        default="cpu",
        help="where decode_on=device decodes: cpu (default) or cuda (nvJPEG; the GPU check uses it)",
    )
    args = ap.parse_args()
    root = Path(args.data)
    make_jpegs(root, args.images)
    shards = Path(f"{root}-shards-{args.images}")
    if not (shards / "largebatch-shards.json").exists():
        from largebatch.data.shards import prepare

        prepare(str(root), str(shards), max_side_px=256, quality=90, progress=False)
    pipes = {
        name: ImageFolderData(
            str(root),
            image_size_px=224,
            augment=True,
            loader_workers=args.workers,
            train_subset=0,
            test_subset=0,
            device=torch.device("cpu"),
            decoder=name,
        )
        for name in ("pil", "torchvision")
    }

    def pipe(path, device="cpu", **kwargs):
        return ImageFolderData(
            str(path),
            image_size_px=224,
            augment=True,
            loader_workers=args.workers,
            train_subset=0,
            test_subset=0,
            device=torch.device(device),
            **kwargs,
        )

    pipes["torchvision, shards"] = pipe(shards)
    # Batch decoding in the training process: on --device (nvJPEG on a GPU node, else the CPU).
    pipes[f"torchvision decode_on=device ({args.device}), folders"] = pipe(root, args.device, decode_on="device")
    pipes[f"torchvision decode_on=device ({args.device}), shards"] = pipe(shards, args.device, decode_on="device")
    from largebatch.data.dali import dali_available

    if dali_available():  # DALI's CPU operators with WORKERS threads (on a GPU node: nvJPEG, GPU resize)
        pipes["dali (cpu), folders"] = pipe(root, decoder="dali")
        pipes["dali (cpu), shards"] = pipe(shards, decoder="dali")
    rates = {name: [] for name in pipes}
    for _ in range(args.rounds):
        for name, data in pipes.items():
            rates[name].append(one_pass(data, args.batch))
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratio = med["torchvision"] / med["pil"]
    ratio_shards = med["torchvision, shards"] / med["pil"]
    costs = per_image_costs(root)
    for name, r in rates.items():
        print(f"{name:38s} {med[name]:8.1f} images/s  (rounds: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"ours / baseline: folders {ratio:.2f}, shards {ratio_shards:.2f}")
    print(json.dumps(costs, indent=2))
    # A GPU's feed: ResNet-50 training images/s per GPU from largebatch.sim presets (published figures):
    # V100 1,098 (Sony NNL, mixed precision) and H100 7,000 (MLPerf v3.0); cores = rate x cost per image.
    per_core = 1e3 / costs["torchvision_decode_augment_ms"]
    feed = {
        gpu: {"images_per_s": rate, "cpu_cores_needed": rate / per_core}
        for gpu, rate in (("V100 (mikami2018 preset)", 1098.4), ("H100 (h100_ndr preset)", 7000.0))
    }
    print(json.dumps(feed, indent=2))
    cpu = cpu_model()
    result = {
        "benchmark": "data_pipeline",
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "images": args.images,
            "size": "500x375 / 375x500, JPEG quality 90",
            "classes": 10,
            "loader_workers": args.workers,
            "batch": args.batch,
            "rounds": args.rounds,
            "decode_on_device": args.device,
            "augmentation": "random-resized crop 224 (0.08-1, 3/4-4/3) + flip + normalize",
        },
        "images_per_s": {name: {"median": med[name], "rounds": r} for name, r in rates.items()},
        "ratio_ours_to_baseline": ratio,
        "ratio_ours_shards_to_baseline": ratio_shards,
        "ratio_to_baseline": {name: m / med["pil"] for name, m in med.items()},
        "dali": _dali_version(),
        "per_image_cost_ms_one_core": costs,
        "gpu_feed_estimate": feed,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
