"""Calibrated mode of the cost model on this machine: predict a 2-process run's step time from
1-process runs at two per-worker batches and a measured gloo all-reduce, then run it.

Question: does ``largebatch simulate --measured ... --alpha-beta ...`` predict the step time of a
data-parallel run it has not seen, within 15 %?

Method (the main job's recipe, ``goyal2017_fashion_mnist``, fp32, one thread per process, no
evaluation until the end):
1. two 1-process runs (``largebatch train --nproc 1``) at global batch = per-worker batch
   B1 and B2; their ``summary.json`` images/s (optimizer steps only) give t(b) = t0 + b / x_max
   (:func:`largebatch.sim.compute.fit_compute`);
2. gloo all-reduce on 2 spawned ranks over 4 KB-16 MB (``allreduce_calibration.measure``), fitted to
   the ring model (:func:`largebatch.sim.calibrate.fit_alpha_beta`);
3. the prediction: :func:`largebatch.sim.step.simulate_step` on 2 "GPUs" behind that link, the
   model's gradient (parameters x 4 bytes) in DDP's buckets, overlapped with backward, at the
   per-worker batch B of the 2-process run, *not* overlapped with backward: gloo reduces on the same
   CPU cores that compute (one thread per process, as many processes as cores), so there is no idle
   unit to hide it on;
4. the 2-process run (``--nproc 2``, global batch 2 B), its step time = global batch / images/s.
The runs alternate (1-process B1, B2, 2-process, and again) ``--rounds`` times; medians are compared.

    python benchmarks/cost_calibration_cpu.py [--rounds 3] [--steps 200] [--out benchmarks/results/cost_calibration_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from _machine import machine

import largebatch

RECIPE = "goyal2017_fashion_mnist"
B1, B2, B_PAIR = 64, 256, 128


def _train(out: Path, nproc: int, global_batch: int, steps: int) -> dict:
    sets = [
        f"train.global_batch_size={global_batch}",
        f"train.stop_after_images={steps * global_batch}",
        "train.threads_per_worker=1",
        "train.precision=fp32",
        "train.eval_every_epochs=100",
        "train.noise_scale=false",
        "data.test_subset=1000",
    ]
    cmd = [sys.executable, "-m", "largebatch", "train", "--recipe", RECIPE, "--nproc", str(nproc), "--out", str(out)]
    subprocess.run(cmd + sum((["--set", s] for s in sets), []), check=True, capture_output=True, text=True)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    from allreduce_calibration import measure

    from largebatch.api import load_config
    from largebatch.sim.calibrate import fit_alpha_beta
    from largebatch.sim.cli import link_network
    from largebatch.sim.compute import Throughput, fit_compute
    from largebatch.sim.step import Workload, simulate_step
    from largebatch.study.advise import _parameter_count

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/cost_calibration_cpu.json")
    args = ap.parse_args()
    runs = {B1: [], B2: [], "pair": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for key, nproc, batch in ((B1, 1, B1), (B2, 1, B2), ("pair", 2, 2 * B_PAIR)):
                summary = _train(Path(tmp) / f"{key}_{r}", nproc, batch, args.steps)
                runs[key].append(summary["images_per_s"])
                print(f"round {r}: {nproc} process(es), global batch {batch}: {summary['images_per_s']:.1f} images/s")
    one = {b: statistics.median(runs[b]) for b in (B1, B2)}
    compute = fit_compute(
        [Throughput(b, one[b], f"1-process run, batch {b}") for b in (B1, B2)], "this CPU", mode="calibrated"
    )
    medians = measure(2, 9)
    link = fit_alpha_beta([(size, 2, "ring", seconds) for size, seconds in medians.items()])
    params = _parameter_count(load_config(RECIPE, []))
    work = Workload(
        compute_s_per_image=1 / compute.x_max_images_per_s,
        compute_fixed_s_per_step=compute.t0_s,
        per_gpu_batch=B_PAIR,
        gradient_bytes=params * 4,
        overlap=False,
    )
    net = link_network(f"{link.alpha_s}:{link.beta_s_per_byte}", 2)
    predicted = simulate_step(net, work, 2, "ring")
    measured_step_s = 2 * B_PAIR / statistics.median(runs["pair"])
    error = predicted.step_s / measured_step_s - 1
    print(compute.describe())
    print(f"gloo link: alpha {link.alpha_s * 1e6:.1f} us, {1e-9 / link.beta_s_per_byte:.2f} GB/s")
    print(
        f"2 processes x {B_PAIR}: predicted step {predicted.step_s * 1e3:.1f} ms (compute {predicted.compute_s * 1e3:.1f}, "
        f"exposed communication {predicted.exposed_communication_s * 1e3:.2f}), measured {measured_step_s * 1e3:.1f} ms: "
        f"{100 * error:+.1f} %"
    )
    result = {
        "benchmark": "cost_calibration_cpu",
        "date": dt.date.today().isoformat(),
        **machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "largebatch": largebatch.__version__,
        "config": {
            "recipe": RECIPE,
            "one_process_batches": [B1, B2],
            "two_process_per_worker_batch": B_PAIR,
            "steps": args.steps,
            "rounds": args.rounds,
            "threads_per_process": 1,
            "precision": "fp32",
            "parameters": params,
            "overlap": False,
        },
        "images_per_s": {str(k): v for k, v in runs.items()},
        "compute": {
            "t0_s": compute.t0_s,
            "x_max_images_per_s": compute.x_max_images_per_s,
            "t0_clamped": compute.t0_clamped,
        },
        "link": {"alpha_s": link.alpha_s, "beta_s_per_byte": link.beta_s_per_byte, "max_abs_error": link.max_abs_error},
        "predicted_step_s": predicted.step_s,
        "predicted_exposed_communication_s": predicted.exposed_communication_s,
        "measured_step_s": measured_step_s,
        "error": error,
        "within_15_percent": abs(error) <= 0.15,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
