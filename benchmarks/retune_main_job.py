"""Retune the main job's schedule for fewer epochs, on a validation split (never the test set).

Question: how few epochs does Goyal's method need on Fashion-MNIST (global batch 512 = 16 BN groups
of 32, 2 workers, SGD with Nesterov momentum, the linear scaling rule, gradual warmup, step decay)
to keep the accuracy of the 9-epoch recipe?

Method: every candidate schedule trains on 55,000 training images with 5,000 held out
(``data.val_size=5000``, drawn by the recipe's seed) and is judged on its final validation top-1
only. The reference is the 9-epoch recipe, run the same way. Rule, fixed before the runs: the
chosen schedule is the one with the fewest epochs whose final validation top-1 is within
``--tolerance`` (0.5) points of the reference's; ties go to the higher validation top-1. Only the
chosen schedule is then run on the test set (by ``benchmarks/main_job.py``, with all 60,000 images).

The runs also evaluate the test set (the trainer always does; it is in each summary.json), but
the rule never reads it and this table leaves it out.

With ``--seeds 0,1`` every candidate runs once per seed (``train.seed``; seed 0's run directory is
the candidate's name, seed s's ``NAME_seed<s>``) and the rule reads the mean over the seeds.
``--set KEY=VALUE`` applies to every run, e.g. another model for the same schedules (the faster
networks of ``benchmarks/fmnist_fast.py``: ``PYTHONPATH=benchmarks ... --set model.name=fmnist_fast:s2``).

Resumable: a candidate whose ``summary.json`` is in ``--out`` is not run again.

    python benchmarks/retune_main_job.py [--out benchmarks/results/main_job_retune] [--only NAME ...]
        [--seeds 0,1] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine  # noqa: E402

VAL_SIZE = 5000

# name: (epochs, warmup epochs, decay epochs). Warmup is Goyal's share, 5 of 90 epochs, except where
# named; "shape9" is the 9-epoch recipe's decay positions (1/2, 7/9 and 8.5/9 of the run) scaled.
CANDIDATES = {
    "e5_two_decays": (5, 5 * 5 / 90, [3.0, 4.25]),
    "e6_shape9": (6, 6 * 5 / 90, [3.0, 6 * 7 / 9, 6 * 8.5 / 9]),
    "e5_shape9": (5, 5 * 5 / 90, [2.5, 5 * 7 / 9, 5 * 8.5 / 9]),
    "e4_two_decays": (4, 4 * 5 / 90, [2.5, 3.5]),
    "reference_e9": (9, 0.5, [4.5, 7.0, 8.5]),
    "e6_two_decays": (6, 6 * 5 / 90, [3.5, 5.0]),
}


def run(name: str, out: Path, seed: int = 0, sets: tuple[str, ...] = ()) -> dict:
    epochs, warmup, decays = CANDIDATES[name]
    run_dir = out / (name if seed == 0 else f"{name}_seed{seed}")
    if (run_dir / "summary.json").is_file():
        return json.loads((run_dir / "summary.json").read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run starts again (its checkpoints are not kept)
    cmd = [
        sys.executable,
        "-m",
        "largebatch",
        "train",
        "--out",
        str(run_dir),
        "--set",
        f"data.val_size={VAL_SIZE}",
        "--set",
        f"train.epochs={epochs}",
        "--set",
        f"schedule.warmup_epochs={warmup:.6g}",
        "--set",
        "schedule.decay_epochs=[" + ", ".join(f"{d:.6g}" for d in decays) + "]",
        "--set",
        f"train.seed={seed}",
    ]
    for item in sets:
        cmd += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["command_s"] = time.perf_counter() - t0
    # keep what a reader needs (config, metrics, summary); checkpoints and event files are large
    for extra in ("checkpoints", "model_final.pt"):
        path = run_dir / extra
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    for events in run_dir.glob("events.out.tfevents.*"):
        events.unlink()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/main_job_retune")
    ap.add_argument("--only", nargs="*", default=None, help="run these candidates only")
    ap.add_argument("--tolerance", type=float, default=0.5, help="validation points below the reference allowed")
    ap.add_argument("--seeds", default="0", help="comma-separated train.seed values per candidate (default 0)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override of every run")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",") if x]
    rows = {}
    for seed in seeds:  # every candidate's first seed before any second one: a cut-short study reads as one
        for name in args.only or CANDIDATES:
            s = run(name, out, seed, tuple(args.set))
            row = rows.setdefault(
                name,
                {
                    "epochs": CANDIDATES[name][0],
                    "warmup_epochs": CANDIDATES[name][1],
                    "decay_epochs": CANDIDATES[name][2],
                    "seeds": [],
                    "val_top1_per_seed": [],
                    "train_wall_s_per_seed": [],
                    "command_s_per_seed": [],
                    "precision": s.get("precision"),
                },
            )
            row["seeds"].append(seed)
            row["val_top1_per_seed"].append(s["val_top1"])
            row["train_wall_s_per_seed"].append(s["wall_s"])
            row["command_s_per_seed"].append(s.get("command_s"))
            row["val_top1"] = sum(row["val_top1_per_seed"]) / len(row["val_top1_per_seed"])
            row["train_wall_s"] = sum(row["train_wall_s_per_seed"]) / len(row["train_wall_s_per_seed"])
            print(f"{name} seed {seed}: val top-1 {s['val_top1']:.2f}%, training {s['wall_s']:.0f} s", flush=True)
    result = {
        "benchmark": "retune_main_job",
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "cpu_capability": _cpu_capability(),
        "val_size": VAL_SIZE,
        "tolerance": args.tolerance,
        "seeds": seeds,
        "overrides": args.set,
        "rows": rows,
    }
    if "reference_e9" in rows:
        floor = rows["reference_e9"]["val_top1"] - args.tolerance
        ok = [n for n, r in rows.items() if r["val_top1"] >= floor]
        chosen = min(ok, key=lambda n: (rows[n]["epochs"], -rows[n]["val_top1"]))
        result.update(val_floor=floor, chosen=chosen)
        print(f"chosen on validation: {chosen} (floor {floor:.2f}%)")
    (out / "retune.json").write_text(json.dumps(result, indent=2) + "\n")


def _cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    main()
