"""Gradient all-reduce algorithms on gloo, 4 ranks on this machine: each of our DDP hooks' collectives
against the default all-reduce, for buckets of 64 KB to 64 MB.

Question: what do the hierarchical and 2D-torus hooks (and fp16/bf16 compression) cost against
DDP's default all-reduce for one bucket, on gloo?

Method: 4 gloo ranks spawned on this machine, topology 2 simulated nodes x 2 workers, torus 2 x 2.
Each variant does exactly what its hook does to a bucket: divide by the world size, then its
collective (for compression: cast to fp16/bf16, all-reduce, cast back). fp32 buckets of 64 KB,
256 KB, 1 MB, 4 MB, 16 MB and 64 MB; variants interleaved round by round, 2 warm-up calls, then
ROUNDS rounds; rank 0's median time per call, and its ratio to the default all-reduce in the same run.

What this can and cannot show: all 4 ranks share 2 cores and memory, so every "link" is a memory
copy through gloo's TCP loopback, intra- and inter-node alike. It measures the overhead of running
three collectives instead of one (more launches, and gloo's reduce-scatter being an all-reduce in
disguise), not the bandwidth advantage on a real network: the hierarchical and torus algorithms win
when inter-node links are slower than intra-node ones and latency dominates, which
`largebatch simulate` (docs/comm.md) models for real clusters.

    python benchmarks/comm_hooks.py [--rounds 7] [--out benchmarks/results/comm_hooks.json]
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

SIZES_BYTES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
VARIANTS = [
    "allreduce (DDP default)",
    "hierarchical (scatter)",
    "hierarchical (reduce)",
    "torus2d 2x2",
    "allreduce + fp16 compression",
    "allreduce + bf16 compression",
]


def _variant(name: str, groups):
    from largebatch.dist.collectives import hierarchical_all_reduce, torus2d_all_reduce

    world = dist.get_world_size()

    def compressed(dtype):
        def run(t):
            c = t.div(world).to(dtype)
            dist.all_reduce(c)
            t.copy_(c)

        return run

    return {
        "allreduce (DDP default)": lambda t: dist.all_reduce(t.div_(world)),
        "hierarchical (scatter)": lambda t: hierarchical_all_reduce(t.div_(world), groups, mode="scatter"),
        "hierarchical (reduce)": lambda t: hierarchical_all_reduce(t.div_(world), groups, mode="reduce"),
        "torus2d 2x2": lambda t: torus2d_all_reduce(t.div_(world), groups),
        "allreduce + fp16 compression": compressed(torch.float16),
        "allreduce + bf16 compression": compressed(torch.bfloat16),
    }[name]


def _worker(rank: int, world: int, init: str, out: str, rounds: int) -> None:
    from largebatch.dist.topology import build_groups, make_topology

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    groups = build_groups(make_topology(world, workers_per_node=2, torus_x=2))
    fns = {name: _variant(name, groups) for name in VARIANTS}
    times = {}
    for size in SIZES_BYTES:
        t = torch.randn(size // 4)
        for name in VARIANTS:
            for _ in range(2):
                fns[name](t)
        per = {name: [] for name in VARIANTS}
        for _ in range(rounds):
            for name in VARIANTS:
                dist.barrier()
                t0 = time.perf_counter()
                fns[name](t)
                per[name].append(time.perf_counter() - t0)
        times[size] = per
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/results/comm_hooks.json")
    args = ap.parse_args()
    world = 4
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "times.pt")
        mp.start_processes(
            _worker, args=(world, os.path.join(tmp, "init"), raw, args.rounds), nprocs=world, start_method="spawn"
        )
        times = torch.load(raw)
    rows = []
    print(f"{'bucket':>8}  " + "  ".join(f"{v[:22]:>22}" for v in VARIANTS))
    for size, per in times.items():
        base = statistics.median(per[VARIANTS[0]])
        row = {"bucket_bytes": size}
        cells = []
        for name in VARIANTS:
            med = statistics.median(per[name])
            row[name] = {
                "median_ms": 1e3 * med,
                "min_ms": 1e3 * min(per[name]),
                "max_ms": 1e3 * max(per[name]),
                "ratio_to_allreduce": med / base,
            }
            cells.append(f"{1e3 * med:9.2f} ms x{med / base:5.2f}")
        rows.append(row)
        print(f"{size >> 10:>6}KB  " + "  ".join(f"{c:>22}" for c in cells))
    cpu = cpu_model()
    result = {
        "benchmark": "comm_hooks",
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "backend": "gloo",
            "world_size": world,
            "topology": "2 simulated nodes x 2 workers, torus 2x2",
            "dtype": "float32",
            "threads_per_rank": 1,
            "rounds": args.rounds,
        },
        "results": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
