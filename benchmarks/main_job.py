"""The README's main job, timed as a whole command: `largebatch train` (default recipe).

Question: does the default recipe (Goyal's method on Fashion-MNIST, 2 CPU workers) reach its target
(>= 91.0% test top-1) with the whole command under 6 minutes on the 2-core machine?

Method: run the command as a user would (`python -m largebatch train --out DIR`, nothing else
running), time it from start to exit (process spawn, data loading, training, evaluations,
checkpoints and plots included) and record its summary.json with the hardware and versions.
REPEATS runs give median and spread; the recipe's fixed seed makes runs differ only in timing.

    python benchmarks/main_job.py [--repeats 1] [--recipe NAME] [--out benchmarks/results/main_job.json] [-- --set KEY=VALUE ...]

With --recipe it times another recipe the same way (the Fashion-MNIST variants of the large-batch
optimizers: results/recipes_fashion_mnist/<recipe>.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--recipe", default=None, help="a recipe other than the default one")
    ap.add_argument("--out", default="benchmarks/results/main_job.json")
    ap.add_argument("extra", nargs="*", help="extra arguments for `largebatch train` (after --)")
    args = ap.parse_args()
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            recipe = ["--recipe", args.recipe] if args.recipe else []
            cmd = [sys.executable, "-m", "largebatch", "train", *recipe, "--out", str(run_dir), *args.extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            command_s = time.perf_counter() - t0
            if proc.returncode:
                sys.exit(f"run {i} failed:\n{proc.stderr[-3000:]}")
            summary = json.loads((run_dir / "summary.json").read_text())
            env = json.loads((run_dir / "env.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
            evals = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
            evals = [{"epoch": r["epoch"], "top1": r["top1"]} for r in evals if r["kind"] == "eval"]
        runs.append({"command_s": command_s, "summary": summary, "evals": evals})
        print(f"run {i}: top-1 {summary['top1']:.2f}% (best {summary['best_top1']:.2f}%), command {command_s:.1f} s, "
              f"training {summary['wall_s']:.1f} s, {summary['images_per_s']:.0f} images/s, "
              f"time to {summary['target_top1']}%: {summary['time_to_target_s']}")
    times = [r["command_s"] for r in runs]
    top1 = [r["summary"]["top1"] for r in runs]
    result = {
        "benchmark": "main_job",
        "date": dt.date.today().isoformat(),
        "command": "largebatch train " + (f"--recipe {args.recipe}" if args.recipe else "(default recipe)")
        + (" " + " ".join(args.extra) if args.extra else ""),
        "hardware": {k: env[k] for k in ("cpu", "cpu_cores", "platform")},
        "versions": {k: env[k] for k in ("python", "torch", "torchvision", "largebatch")},
        "config": config,
        "median_command_s": statistics.median(times),
        "min_command_s": min(times),
        "max_command_s": max(times),
        "median_top1": statistics.median(top1),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
