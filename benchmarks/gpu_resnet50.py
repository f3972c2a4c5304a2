"""ResNet-50 training throughput on one device: the trainer against a bare PyTorch loop.

Question: does ``Trainer.fit`` train ResNet-50 as fast as the plainest loop one could write for the
same job on one GPU? Targets (benchmarks/README.md): the trainer >= 0.98x the bare loop, and >= 3,000
images/s per H200 (MLPerf v4.0's 8 x H200 run reached about 7,800 per GPU end to end with fused
kernels and DALI).

Method: one process, no process group (one GPU). Both variants train torchvision-style ResNet-50
(``largebatch.nn.build_model("resnet50")``, ghost BN over 32 images, zero-init residuals) at
``--image-size`` px on synthetic data (``data.name=synthetic``, 1000 classes, the same data object and
sampler for both), ``--batch`` images per step, channels_last, bf16 autocast, SGD with Nesterov
momentum 0.9 and weight decay 1e-4:

* ``bare``: written here: model, ``torch.optim.SGD``, ``data.train_batches``; forward under
  autocast, cross-entropy, backward, step, zero_grad; one host sync at the end;
* ``trainer``: ``Trainer.fit`` of the ``goyal2017_resnet50_imagenet_8k`` recipe with the same model,
  data, batch and precision (``train.precision=bf16``); its images/s is its training loop's, from the
  intervals between its metric records after the first (warm-up) record.

Each trains ``--warmup`` steps that are not timed, then ``--steps`` timed steps. Per round both run
without and with ``torch.compile`` (``train.compile``; the bare loop calls ``model.compile()``), the
order alternating between rounds; the median of ``--rounds`` rounds and the ratio of medians are
reported, with the peak memory of each variant (``torch.cuda.max_memory_allocated``).

    python benchmarks/gpu_resnet50.py --out results.json [--device auto] [--rounds 3] [--steps 30]
    python benchmarks/gpu_resnet50.py --device cpu --image-size 32 --batch 16 --steps 2 --warmup 1 \\
        --rounds 1 --compile off      # the CPU dry run of benchmarks/gpu_check.sh
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

import largebatch  # noqa: E402
from largebatch.config import apply_overrides  # noqa: E402
from largebatch.data import GlobalBatchSampler, build_data  # noqa: E402
from largebatch.dist.env import DistEnv  # noqa: E402
from largebatch.nn import build_model  # noqa: E402
from largebatch.plan import resolve  # noqa: E402
from largebatch.recipes import get_recipe  # noqa: E402
from largebatch.train.metrics import read_metrics  # noqa: E402
from largebatch.train.trainer import Trainer  # noqa: E402


def _config(args, compiled: bool):
    steps = args.warmup + args.steps
    overrides = [
        "data.name=synthetic",
        f"data.synthetic.train_samples={steps * args.batch}",
        "data.synthetic.test_samples=" + str(args.batch),
        "data.synthetic.classes=1000",
        "data.synthetic.channels=3",
        f"data.image_size_px={args.image_size}",
        f"train.global_batch_size={args.batch}",
        f"train.max_micro_batch_size={args.batch}",
        "train.nproc=1",
        "train.epochs=1",
        "train.precision=bf16",
        f"train.device={args.device}",
        f"train.compile={str(compiled).lower()}",
        f"train.log_every_steps={args.warmup}",
        "train.target_top1=0",
        "train.eval_every_epochs=1",
        "schedule.warmup_epochs=0",
    ]
    return apply_overrides(get_recipe("goyal2017_resnet50_imagenet_8k"), overrides)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def run_bare(args, env: DistEnv, compiled: bool) -> tuple[float, float | None]:
    cfg = _config(args, compiled)
    data = build_data(cfg, device=env.device)
    torch.manual_seed(0)
    model = build_model(
        "resnet50", num_classes=1000, in_channels=3, bn_batch_size=32, zero_init_residual=True, fc_init_std=0.01
    )
    model = model.to(env.device, memory_format=torch.channels_last)
    if compiled:
        model.compile()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sampler = GlobalBatchSampler(data.num_train, args.batch, world_size=1, rank=0, seed=0)
    sampler.set_epoch(0)
    _reset_memory(env.device)
    total = torch.zeros((), device=env.device)
    t0 = None
    for step, (images, labels) in enumerate(data.train_batches(sampler, seed=0)):
        if step == args.warmup:
            _sync(env.device)
            t0 = time.perf_counter()
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(env.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += loss.detach().float()
    total.item()
    seconds = time.perf_counter() - t0
    return args.steps * args.batch / seconds, _peak_gib(env.device)


def run_trainer(args, env: DistEnv, compiled: bool) -> tuple[float, float | None]:
    cfg = _config(args, compiled)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, resolve(cfg, 1), env, Path(tmp) / "run")
        _reset_memory(env.device)
        trainer.fit()
        records = [r for r in read_metrics(Path(tmp) / "run") if r["kind"] == "train"]
    seconds, prev = 0.0, records[0]["step"]  # the first record closes the untimed warm-up
    for r in records[1:]:
        seconds += (r["step"] - prev) * args.batch / r["images_per_s"]
        prev = r["step"]
    assert prev - records[0]["step"] == args.steps, records
    return args.steps * args.batch / seconds, _peak_gib(env.device)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda or cpu")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--compile", default="both", choices=("both", "off", "on"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    env = DistEnv(0, 1, 0, 1, device, None)
    modes = {"both": (False, True), "off": (False,), "on": (True,)}[args.compile]
    names = [f"{v}{'_compiled' if c else ''}" for c in modes for v in ("bare", "trainer")]
    rates = {n: [] for n in names}
    peaks = {n: None for n in names}
    for r in range(args.rounds):
        for compiled in modes:
            order = ("bare", "trainer") if r % 2 == 0 else ("trainer", "bare")
            for variant in order:
                name = f"{variant}{'_compiled' if compiled else ''}"
                fn = run_bare if variant == "bare" else run_trainer
                rate, peak = fn(args, env, compiled)
                rates[name].append(rate)
                peaks[name] = max(peaks[name] or 0.0, peak) if peak is not None else None
                print(f"round {r} {name}: {rate:.1f} images/s, peak {peak} GiB", flush=True)
    med = {n: statistics.median(v) for n, v in rates.items()}
    ratios = {
        ("compiled" if c else "eager"): med[f"trainer{'_compiled' if c else ''}"]
        / med[f"bare{'_compiled' if c else ''}"]
        for c in modes
    }
    result = {
        "benchmark": "gpu_resnet50",
        "date": dt.date.today().isoformat(),
        **machine(),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "largebatch": largebatch.__version__,
        "config": {k: getattr(args, k) for k in ("image_size", "batch", "warmup", "steps", "rounds", "compile")},
        "images_per_s": {n: {"median": med[n], "rounds": rates[n]} for n in names},
        "trainer_over_bare": ratios,
        "peak_memory_gib": peaks,
    }
    print(json.dumps({"trainer_over_bare": ratios, "median_images_per_s": med}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
