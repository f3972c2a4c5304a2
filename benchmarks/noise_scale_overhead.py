"""Cost of measuring the gradient noise scale (train.noise_scale=true) per training step.

Question: how much longer is a data-parallel step (forward, backward with DDP's all-reduce,
optimizer step) when the noise-scale hook wraps the all-reduce and takes two squared norms per
bucket, with the estimator update after the step? Target (issue 8): at most 2% of step time.

Method (1), the number that decides: in one process with 1 thread, the median step time of each
model (forward, backward, SGD) against the median time of the work the noise scale adds to a step
(two squared norms of the whole gradient and the estimator update); their ratio.

Method (2), end to end: 2 spawned gloo ranks on this machine (1 thread each), a model in DDP, SGD with momentum.
Per round, the same model with DDP's own all-reduce ("off") and with the noise-scale hook ("on"),
STEPS timed steps each after 3 warm-up steps, the two interleaved in every round; medians of the
per-round step times and their ratio. Models: the main job's resnet_fmnist (77k parameters, 28x28,
256 images per worker) and torchvision's resnet18 (11.7M parameters, 3x64x64, 32 images per
worker), where the norms pass over 150 times more gradient per image. On 2 shared cores the gloo
step times vary by about 15% from round to round, so (2) only bounds the effect roughly.

    python benchmarks/noise_scale_overhead.py [--rounds 5] [--steps 10]
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

MODELS = {"resnet_fmnist": (1, 28, 256), "resnet18": (3, 64, 32)}


def _time_steps(model_name: str, noise: bool, steps: int) -> float:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from largebatch.nn.models import build_model
    from largebatch.train.noise_scale import NoiseScaleEstimator, wrap_hook

    channels, size, batch = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(
        model_name,
        num_classes=10,
        in_channels=channels,
        bn_batch_size=32,
        width=16,
        blocks_per_stage=1,
        zero_init_residual=True,
        fc_init_std=0.01,
    )
    ddp = DDP(model)
    state, est = None, NoiseScaleEstimator()
    if noise:
        state, hook = wrap_hook(None)
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size)
    y = torch.randint(0, 10, (batch,))
    world = dist.get_world_size()
    for i in range(steps + 3):
        if i == 3:
            dist.barrier()
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if state is not None:
            local_sq, global_sq = state.take()
            est.update(local_sq, global_sq, batch, batch * world)
    dist.barrier()
    return (time.perf_counter() - t0) / steps


def _worker(rank: int, world: int, init: str, out: str, rounds: int, steps: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    results = {m: {"off": [], "on": []} for m in MODELS}
    for _ in range(rounds):
        for m in MODELS:
            for variant in ("off", "on"):
                results[m][variant].append(_time_steps(m, variant == "on", steps))
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def isolated_cost(model_name: str, reps: int = 200) -> dict:
    """In one process (1 thread): the median step (forward, backward, SGD) and the median of the
    work the hook and the estimator add to a step (two squared norms of the whole flattened
    gradient, as the buckets hold it, and one estimator update). DDP timings on 2 shared cores vary
    by +-15% per round, more than the effect; this ratio is the added compute itself."""
    from largebatch.nn.models import build_model
    from largebatch.train.noise_scale import NoiseScaleEstimator, _sq_norm

    torch.set_num_threads(1)
    channels, size, batch = MODELS[model_name]
    torch.manual_seed(0)
    model = build_model(
        model_name,
        num_classes=10,
        in_channels=channels,
        bn_batch_size=32,
        width=16,
        blocks_per_stage=1,
        zero_init_residual=True,
        fc_init_std=0.01,
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, channels, size, size), torch.randint(0, 10, (batch,))
    steps = []
    for i in range(13):
        t0 = time.perf_counter()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            steps.append(time.perf_counter() - t0)
        if i < 12:
            opt.zero_grad(set_to_none=True)
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    est, extra = NoiseScaleEstimator(), []
    for _ in range(reps):
        t0 = time.perf_counter()
        local, reduced = _sq_norm(flat), _sq_norm(flat)
        est.update(local, reduced, batch, 2 * batch)
        extra.append(time.perf_counter() - t0)
    step, add = statistics.median(steps), statistics.median(extra)
    return {"step_ms": 1e3 * step, "added_ms": 1e3 * add, "added_fraction": add / step, "gradient_values": flat.numel()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/noise_scale_overhead.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.json")
        mp.start_processes(
            _worker, args=(2, os.path.join(tmp, "init"), raw, args.rounds, args.steps), nprocs=2, start_method="spawn"
        )
        results = json.loads(Path(raw).read_text())
    summary = {}
    isolated = {m: isolated_cost(m) for m in MODELS}
    for m, c in isolated.items():
        print(
            f"{m:14s} step {c['step_ms']:8.2f} ms, added by the noise scale {c['added_ms']:.3f} ms "
            f"({100 * c['added_fraction']:.2f}% of the step; {c['gradient_values']:,} gradient values)"
        )
    for m, r in results.items():
        off, on = statistics.median(r["off"]), statistics.median(r["on"])
        summary[m] = {
            "step_ms_off": 1e3 * off,
            "step_ms_on": 1e3 * on,
            "ratio_on_to_off": on / off,
            "rounds_ms_off": [1e3 * v for v in r["off"]],
            "rounds_ms_on": [1e3 * v for v in r["on"]],
        }
        print(f"{m:14s} off {1e3 * off:8.2f} ms  on {1e3 * on:8.2f} ms  ratio {on / off:.4f}")
    result = {
        "benchmark": "noise_scale_overhead",
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "ranks": 2,
            "backend": "gloo",
            "threads_per_rank": 1,
            "rounds": args.rounds,
            "steps": args.steps,
            "models": {m: {"in_channels": c, "size_px": s, "per_worker_batch": b} for m, (c, s, b) in MODELS.items()},
        },
        "results": summary,
        "isolated_cost": isolated,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
