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

``--study fast`` (the fast default model): the candidates are FAST_CANDIDATES (a stride-2 stem,
label smoothing, test-time flips, progressive resizing), the reference the ResNet-8-s2's 9-epoch
runs, and the rule, fixed before the runs: among the candidates whose mean validation top-1 is within
the tolerance of the reference's, the one with the least training time (wall time less evaluation,
mean over seeds, measured on an otherwise idle machine) wins. Training time, not FLOPs: on 2 CPU
cores a 20-px epoch of this network costs far more than (20/28)^2 of a 28-px one. ``cost_epochs``
(FLOPs in 28-px epochs) is recorded beside it.

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
BASE_RECIPE = "goyal2017_fashion_mnist_28px"

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


def _shape9(epochs: int) -> list[float]:
    """The 9-epoch recipe's decay positions (1/2, 7/9 and 8.5/9 of the run) for a run of ``epochs``."""
    return [epochs / 2, epochs * 7 / 9, epochs * 8.5 / 9]


# The fast study (``--study fast``): the ResNet-8 with a stride-2 stem (model.stem_stride=2), label
# smoothing 0.1 and test-time flips, against the ResNet-8-s2 9-epoch reference measured without them
# (benchmarks/results/main_job_fast_s2/reference_e9*, copied into the study's --out). Progressive
# resizing: "pNNxK" trains the first K epochs at NN px, the rest at 28 px. Warmup is Goyal's share
# (5/90) of the run, decays at the 9-epoch recipe's positions scaled. Listed before any was run.
FAST_SETS = ("model.stem_stride=2", "train.label_smoothing=0.1", "train.eval_flip=true")
LINEAR = ("schedule.name=poly", "schedule.poly.power=1", "schedule.end_lr=0")
FAST_CANDIDATES = {
    "e6_shape9": (6, 6 * 5 / 90, _shape9(6), FAST_SETS),
    "e5_shape9": (5, 5 * 5 / 90, _shape9(5), FAST_SETS),
    "e7_p20x3": (
        7,
        7 * 5 / 90,
        _shape9(7),
        (*FAST_SETS, "data.resize_stages=[{start_epoch: 0, image_size_px: 20}, {start_epoch: 3, image_size_px: 0}]"),
    ),
    "e8_p18x4": (
        8,
        8 * 5 / 90,
        _shape9(8),
        (*FAST_SETS, "data.resize_stages=[{start_epoch: 0, image_size_px: 18}, {start_epoch: 4, image_size_px: 0}]"),
    ),
    "e6_p20x2": (
        6,
        6 * 5 / 90,
        _shape9(6),
        (*FAST_SETS, "data.resize_stages=[{start_epoch: 0, image_size_px: 20}, {start_epoch: 2, image_size_px: 0}]"),
    ),
    "e7_p16x3": (
        7,
        7 * 5 / 90,
        _shape9(7),
        (*FAST_SETS, "data.resize_stages=[{start_epoch: 0, image_size_px: 16}, {start_epoch: 3, image_size_px: 0}]"),
    ),
    # second round, listed after the first round's seed-0 results: linear (poly 1) and cosine decay to 0
    # after the warmup instead of steps
    "e5_linear": (5, 5 * 5 / 90, [], (*FAST_SETS, *LINEAR)),
    "e6_linear": (6, 6 * 5 / 90, [], (*FAST_SETS, *LINEAR)),
    "e5_cosine": (5, 5 * 5 / 90, [], (*FAST_SETS, "schedule.name=cosine", "schedule.end_lr=0")),
}
FAST_REFERENCE = ("reference_e9", 9, 0.5, [4.5, 7.0, 8.5])


def cost_epochs(epochs: int, sets: tuple[str, ...]) -> float:
    """Training compute in full-resolution epochs: an epoch at s px costs (s / 28)^2 of one at 28 px
    (the convolutions' FLOPs; the network is fully convolutional)."""
    import yaml

    stages = []
    for item in sets:
        if item.startswith("data.resize_stages="):
            stages = [(st["start_epoch"], st["image_size_px"]) for st in yaml.safe_load(item.split("=", 1)[1])]
    total = 0.0
    for epoch in range(epochs):
        size = 0
        for start, px in stages:
            if start <= epoch:
                size = px
        total += ((size or 28) / 28) ** 2
    return total


def run(name: str, out: Path, seed: int = 0, sets: tuple[str, ...] = ()) -> dict:
    epochs, warmup, decays, *extra = CANDIDATES[name]
    sets = (*(extra[0] if extra else ()), *sets)
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
        # the recipe every study ran on (the default recipe until the fast study chose its successor)
        "--recipe",
        BASE_RECIPE,
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
    ap.add_argument(
        "--study",
        choices=("epochs", "fast"),
        default="epochs",
        help="epochs: the ResNet-8 schedules, fewest epochs wins; fast: FAST_CANDIDATES, the least "
        "training time (wall time less evaluation, mean over seeds) wins",
    )
    args = ap.parse_args()
    if args.study == "fast":
        CANDIDATES.clear()
        CANDIDATES.update(FAST_CANDIDATES)
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
                    "cost_epochs": cost_epochs(CANDIDATES[name][0], (*_extra(name), *args.set)),
                    "overrides": list(_extra(name)),
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
            row.setdefault("train_s_per_seed", []).append(s["wall_s"] - s["eval_s"])
            row["train_s"] = sum(row["train_s_per_seed"]) / len(row["train_s_per_seed"])
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
    reference = rows.get("reference_e9")
    if args.study == "fast":
        reference = _reference_row(out, seeds)
        result["reference"] = reference
    if reference:
        floor = reference["val_top1"] - args.tolerance
        ok = [n for n, r in rows.items() if r["val_top1"] >= floor]
        key = "train_s" if args.study == "fast" else "epochs"
        chosen = min(ok, key=lambda n: (rows[n][key], -rows[n]["val_top1"])) if ok else None
        result.update(val_floor=floor, chosen=chosen)
        print(f"chosen on validation: {chosen} (floor {floor:.2f}%)")
    (out / "retune.json").write_text(json.dumps(result, indent=2) + "\n")


def _extra(name: str) -> tuple[str, ...]:
    return tuple(CANDIDATES[name][3]) if len(CANDIDATES[name]) > 3 else ()


def _reference_row(out: Path, seeds: list[int]) -> dict | None:
    """The fast study's reference: the 9-epoch ResNet-8-s2 runs in ``out`` (reference_e9[_seedS])."""
    vals = []
    for seed in seeds:
        path = out / (FAST_REFERENCE[0] if seed == 0 else f"{FAST_REFERENCE[0]}_seed{seed}") / "summary.json"
        if not path.is_file():
            return None
        vals.append(json.loads(path.read_text())["val_top1"])
    return {
        "name": FAST_REFERENCE[0],
        "epochs": FAST_REFERENCE[1],
        "val_top1_per_seed": vals,
        "val_top1": sum(vals) / len(vals),
    }


def _cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    main()
