"""The trainer against a bare DDP loop, and the achieved FLOP/s against the machine's peak.

Question 1: does ``Trainer.fit`` train as fast as the plainest data-parallel loop one could write
for the same job? Target: the trainer >= 0.98x the bare loop's images/s with the default settings.

Method: 2 spawned gloo ranks (1 thread each, as ``largebatch train`` runs them), the main job's
setting: resnet_fmnist with ghost BN over 32 samples, global batch 512 (256 per rank), channels_last,
Fashion-MNIST with random flips, SGD with Nesterov momentum, the run's precision. Per round, in the
same processes:

Every rank keeps freed memory as ``largebatch train``'s workers do (``train.malloc_cache_mib``,
``--malloc-cache-mib``), for both loops.

* ``bare``: written here: ``build_model``, DDP, ``torch.optim.SGD``; the same data object, sampler
  and augmentation as the trainer (``TensorImageData.train_batches``); the LR set each step; forward
  under autocast, backward, step, zero_grad; one host sync at the end.
* ``trainer`` (defaults) and one variant per optional per-step cost switched off: ``no_noise_scale``
  (``train.noise_scale=false``), ``no_control`` (the per-step all-reduce of the stop/checkpoint
  flags replaced by a constant), ``no_nonfinite_check`` (the host check of the gradients replaced by
  True) and ``no_metrics`` (``train.log_every_steps`` longer than the run: one record at the end).

Each trains STEPS steps on ``data.train_subset = STEPS x 512`` images in one epoch; the trainer's
images/s is its training loop's (the intervals between its metric records, so the evaluation and
checkpoint after the epoch are left out); the bare loop's is its timed loop. The order inside a
round alternates (A B A B ...), ratios are per round and the median is reported.

Question 2: what fraction of the CPU's peak do the trainer's steps reach? FLOPs per trained image
are counted with ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward of the model; 2
FLOPs per multiply-accumulate); achieved FLOP/s = FLOPs per image x images/s. The peak is derived in
docs/performance.md: cores x FMA pipes x lanes per vector x 2 FLOPs per FMA x clock. bf16 is timed
on the bare loop for BF16_STEPS steps (on a CPU without native bf16 it is emulated and slow).

    python benchmarks/trainer_overhead.py [--rounds 5] [--steps 20] [--bf16-steps 4] [--malloc-cache-mib 1024]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

VARIANTS = ("trainer", "no_noise_scale", "no_control", "no_nonfinite_check", "no_metrics")


def _config(steps: int, precision: str, variant: str):
    from largebatch.config import apply_overrides
    from largebatch.recipes import DEFAULT_RECIPE, get_recipe

    overrides = [
        f"data.train_subset={steps * 512}",
        "data.test_subset=1000",
        "train.epochs=1",
        f"train.precision={precision}",
        "train.target_top1=0",
    ]
    if variant == "no_noise_scale":
        overrides.append("train.noise_scale=false")
    if variant == "no_metrics":
        overrides.append(f"train.log_every_steps={10 * steps}")
    return apply_overrides(get_recipe(DEFAULT_RECIPE), overrides)


def run_trainer(env, steps: int, precision: str, variant: str) -> float:
    """images/s of Trainer.fit's training loop for ``variant``."""
    from largebatch.plan import resolve
    from largebatch.train.metrics import read_metrics
    from largebatch.train.trainer import Trainer

    cfg = _config(steps, precision, variant)
    with tempfile.TemporaryDirectory() as tmp:
        box = [tmp]
        dist.broadcast_object_list(box, src=0)  # rank 0's directory: the run's files are in one place
        trainer = Trainer(cfg, resolve(cfg, env.world_size), env, Path(box[0]) / "run")
        if variant == "no_control":
            trainer.checkpoints.triggers.control_flags = lambda step: (False, False)
        if variant == "no_nonfinite_check":
            trainer.guard.gradients_finite = lambda state: True
        trainer.fit()
        seconds = 0.0
        if env.is_main:
            records = [r for r in read_metrics(Path(box[0]) / "run") if r["kind"] == "train"]
            prev = 0
            for r in records:
                seconds += (r["step"] - prev) * 512 / r["images_per_s"]
                prev = r["step"]
            assert prev == steps, records
        dist.barrier()
    return steps * 512 / seconds if env.is_main else 0.0


def run_bare(env, steps: int, precision: str) -> float:
    """images/s of a bare DDP loop over the same data, model, augmentation and batch."""
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from largebatch.data import GlobalBatchSampler, build_data
    from largebatch.nn import build_model

    cfg = _config(steps, precision, "bare")
    data = build_data(cfg, device=env.device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(
        cfg.model.name,
        num_classes=10,
        in_channels=1,
        bn_batch_size=32,
        width=cfg.model.width,
        blocks_per_stage=cfg.model.blocks_per_stage,
        stem_stride=cfg.model.stem_stride,
        zero_init_residual=True,
        fc_init_std=0.01,
    )
    model = model.to(memory_format=torch.channels_last)
    ddp = DDP(model, forward_sync_buffers=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    sampler = GlobalBatchSampler(data.num_train, 512, world_size=env.world_size, rank=env.rank, seed=cfg.train.seed)
    sampler.set_epoch(0)
    dtype = {"bf16": torch.bfloat16}.get(precision)
    dist.barrier()
    t0 = time.perf_counter()
    total = torch.zeros(())
    for step, (images, labels) in enumerate(data.train_batches(sampler, seed=cfg.train.seed)):
        for group in opt.param_groups:
            group["lr"] = 0.1 + 0.7 * min(1.0, step / 28)
        images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(ddp(images), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total += loss.detach().float()
    total.item()
    seconds = time.perf_counter() - t0
    return steps * 512 / seconds


def flops_per_image(precision: str) -> float:
    """Forward + backward FLOPs of resnet_fmnist per 1x28x28 image (flop_counter, batch 256)."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from largebatch.nn import build_model

    m = _config(1, precision, "flops").model  # the default recipe's network
    model = build_model(
        m.name,
        num_classes=10,
        in_channels=1,
        bn_batch_size=32,
        width=m.width,
        blocks_per_stage=m.blocks_per_stage,
        stem_stride=m.stem_stride,
    )
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    dtype = {"bf16": torch.bfloat16}.get(precision)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    return counter.get_total_flops() / 256


def _worker(
    rank: int,
    world: int,
    init_file: str,
    out: str,
    rounds: int,
    steps: int,
    bf16_steps: int,
    precision: str,
    malloc_cache_mib: int,
) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from largebatch.dist.env import keep_freed_memory

    keep_freed_memory(malloc_cache_mib)  # as largebatch's workers do (train.malloc_cache_mib), for both loops
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    import logging

    from largebatch.dist.env import DistEnv, configure_logging

    configure_logging(rank, level=logging.WARNING)
    env = DistEnv(rank, world, rank, world, torch.device("cpu"), "gloo")
    rows = []
    for r in range(rounds):
        order = ["bare", *VARIANTS] if r % 2 == 0 else [*VARIANTS, "bare"]  # alternate who goes first
        row = {}
        for name in order:
            row[name] = run_bare(env, steps, precision) if name == "bare" else run_trainer(env, steps, precision, name)
        rows.append(row)
        if rank == 0:
            print(f"round {r}: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()) + " images/s", flush=True)
    bf16 = run_bare(env, bf16_steps, "bf16") if bf16_steps else None
    fp32_ref = run_bare(env, bf16_steps, "fp32") if bf16_steps else None
    if rank == 0:
        Path(out).write_text(json.dumps({"rows": rows, "bf16_bare": bf16, "fp32_bare_same_steps": fp32_ref}))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--bf16-steps", type=int, default=4)
    ap.add_argument(
        "--malloc-cache-mib",
        type=int,
        default=1024,
        help="train.malloc_cache_mib of every rank, for both loops (0: glibc's defaults)",
    )
    ap.add_argument("--out", default="benchmarks/results/trainer_overhead.json")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import largebatch
    from largebatch.sim.peak import machine_peak
    from largebatch.train.precision import choose_precision

    precision = choose_precision("auto", torch.device("cpu"))
    with tempfile.TemporaryDirectory() as tmp:
        result_file = os.path.join(tmp, "result.json")
        mp.start_processes(
            _worker,
            args=(
                2,
                os.path.join(tmp, "rdzv"),
                result_file,
                args.rounds,
                args.steps,
                args.bf16_steps,
                precision.precision,
                args.malloc_cache_mib,
            ),
            nprocs=2,
            start_method="spawn",
        )
        raw = json.loads(Path(result_file).read_text())
    rows = raw["rows"]
    ratios = {v: [row[v] / row["bare"] for row in rows] for v in VARIANTS}
    peak = machine_peak()
    flops = {p: flops_per_image(p) for p in ("fp32", "bf16")}
    trainer_ips = statistics.median(row["trainer"] for row in rows)
    bare_ips = statistics.median(row["bare"] for row in rows)
    main_precision = precision.precision
    achieved = {
        main_precision: {
            "trainer_gflop_s": flops[main_precision] * trainer_ips / 1e9,
            "bare_gflop_s": flops[main_precision] * bare_ips / 1e9,
        },
    }
    if raw["bf16_bare"]:
        achieved["bf16_bare_gflop_s"] = flops["bf16"] * raw["bf16_bare"] / 1e9
        achieved["fp32_bare_gflop_s_same_steps"] = flops["fp32"] * raw["fp32_bare_same_steps"] / 1e9
    result = {
        "benchmark": "trainer_overhead",
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "versions": {"torch": torch.__version__, "largebatch": largebatch.__version__},
        "config": {
            "rounds": args.rounds,
            "steps": args.steps,
            "global_batch_size": 512,
            "world_size": 2,
            "threads_per_rank": 1,
            "malloc_cache_mib": args.malloc_cache_mib,
            "precision": main_precision,
            "precision_reason": precision.reason,
            "model": "the default recipe's resnet_fmnist (ghost BN 32, channels_last)",
            "model_config": dataclasses.asdict(_config(1, main_precision, "flops").model),
            "bf16_steps": args.bf16_steps,
        },
        "images_per_s": rows,
        "ratio_to_bare": ratios,
        "median_ratio_to_bare": {v: statistics.median(r) for v, r in ratios.items()},
        "flops_per_image": flops,
        "peak": peak,
        "achieved": achieved,
        "fraction_of_peak": {
            "trainer": achieved[main_precision]["trainer_gflop_s"] / peak["fp32_gflop_s"],
            "bare": achieved[main_precision]["bare_gflop_s"] / peak["fp32_gflop_s"],
        },
        "bf16_bare_images_per_s": raw["bf16_bare"],
        "fp32_bare_images_per_s_same_steps": raw["fp32_bare_same_steps"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    med = result["median_ratio_to_bare"]
    print("median ratio to the bare loop: " + ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    print(
        f"FLOPs/image {flops['fp32'] / 1e6:.1f} M; {main_precision}: trainer "
        f"{achieved[main_precision]['trainer_gflop_s']:.1f} GFLOP/s, peak {peak['fp32_gflop_s']:.1f} GFLOP/s "
        f"({result['fraction_of_peak']['trainer']:.0%}); bf16 bare {raw['bf16_bare']} images/s"
    )


if __name__ == "__main__":
    main()
