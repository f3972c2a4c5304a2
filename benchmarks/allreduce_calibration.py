"""Calibrate the cost model on this machine: gloo all-reduce time over message sizes and world sizes,
the alpha-beta fit of the ring model to it, and the model's error against every measurement.

Question: does the alpha-beta model of largebatch.sim describe a real all-reduce, and with which
latency alpha and inverse bandwidth beta on this machine's gloo/TCP-loopback "link"?

Method: for world sizes 2, 3 and 4 (spawned gloo ranks, one thread each), fp32 tensors of 4 KB to
16 MB, `dist.all_reduce` timed on rank 0 after a barrier over a run of back-to-back calls (4 to 64,
fewer for large tensors; a single call is dominated by the barrier's skew between ranks); 2 warm-up
calls, then REPEATS timed runs, median per (size, world size). The fit is a least-squares fit of the ring model
t = 2(N-1) alpha + 2(N-1)/N * D * beta (largebatch.sim.calibrate.fit_alpha_beta); we report alpha,
beta (as GB/s), and the relative error of the model per point, median and maximum.

Caveat: N ranks share 2 cores, so beyond N = 2 the ranks also compete for CPU time; gloo's all-reduce
algorithm for a given size is gloo's choice (ring or otherwise). The fit says what this machine
does, not what a cluster does.

    python benchmarks/allreduce_calibration.py [--repeats 9] [--out benchmarks/results/allreduce_calibration.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _machine import cpu_model

import largebatch

SIZES_BYTES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]
WORLD_SIZES = [2, 3, 4]


def _worker(rank: int, world: int, init: str, out: str, repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    medians = {}
    for size in SIZES_BYTES:
        t = torch.randn(size // 4)
        for _ in range(2):
            dist.all_reduce(t)
        times = []
        calls = max(4, min(64, (8 << 20) // size))  # back-to-back calls per timing: amortizes barrier skew
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(calls):
                dist.all_reduce(t)
            times.append((time.perf_counter() - t0) / calls)
        medians[size] = statistics.median(times)
    if rank == 0:
        Path(out).write_text(json.dumps(medians))
    dist.destroy_process_group()


def measure(world: int, repeats: int) -> dict[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "medians.json")
        mp.start_processes(
            _worker, args=(world, os.path.join(tmp, "init"), out, repeats), nprocs=world, start_method="spawn"
        )
        return {int(k): v for k, v in json.loads(Path(out).read_text()).items()}


def main() -> None:
    from largebatch.sim.calibrate import fit_alpha_beta

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default="benchmarks/results/allreduce_calibration.json")
    args = ap.parse_args()
    measurements = []
    for world in WORLD_SIZES:
        for size, seconds in measure(world, args.repeats).items():
            measurements.append({"bytes": size, "world_size": world, "seconds": seconds})
    fit = fit_alpha_beta([(m["bytes"], m["world_size"], "ring", m["seconds"]) for m in measurements])
    for m, err in zip(measurements, fit.relative_errors):
        m["model_relative_error"] = err
        print(
            f"N={m['world_size']}  {m['bytes'] >> 10:>6} KB  {1e3 * m['seconds']:8.3f} ms  model error {100 * err:+6.1f}%"
        )
    print(
        f"alpha = {1e6 * fit.alpha_s:.1f} us, beta = {fit.beta_s_per_byte:.3e} s/B "
        f"({1e-9 / fit.beta_s_per_byte:.2f} GB/s); |error| median {100 * fit.median_abs_error:.1f}%, "
        f"max {100 * fit.max_abs_error:.1f}%"
    )
    cpu = cpu_model()
    result = {
        "benchmark": "allreduce_calibration",
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "backend": "gloo",
            "world_sizes": WORLD_SIZES,
            "sizes_bytes": SIZES_BYTES,
            "repeats": args.repeats,
            "threads_per_rank": 1,
            "model": "ring: 2(N-1) alpha + 2(N-1)/N D beta",
        },
        "fit": {
            "alpha_s": fit.alpha_s,
            "beta_s_per_byte": fit.beta_s_per_byte,
            "bandwidth_gb_s": 1e-9 / fit.beta_s_per_byte,
            "median_abs_relative_error": fit.median_abs_error,
            "max_abs_relative_error": fit.max_abs_error,
        },
        "measurements": measurements,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
