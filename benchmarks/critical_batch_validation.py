"""Validation of ``largebatch advise``'s critical batch on configurations it was not fitted to.

The plan (docs/noise_scale.md, written before any of its runs): two calibration configurations fix
the calibration factor, six held-out ones test it; each configuration's ground truth is the
branching yardstick (``largebatch critical-batch``) from a reference run's checkpoints before its
first LR decay. Both sides are the S_min-weighted average of B_noise over the same stretch of the
run: from the end of warmup to the horizon (the first LR decay of a step schedule, else half the
run), the measured points' B_noise interpolated in log-log and held constant beyond them.

    python benchmarks/critical_batch_validation.py probe   [--only NAME ...]   # advise on each (minutes)
    python benchmarks/critical_batch_validation.py measure [--only NAME ...]   # yardstick (hours each)
    python benchmarks/critical_batch_validation.py resolve [--only NAME ...]   # one more doubling where unresolved
    python benchmarks/critical_batch_validation.py report                      # calibrate, compare, write

Every step is resumable: a finished probe, reference run or branch is kept, and the same command
continues. ``report`` writes ``benchmarks/results/critical_batch_validation.json`` (one object per
configuration: ``config``, ``role``, ``predicted``, ``predicted_low``, ``predicted_high``,
``measured``, ``measured_low``, ``measured_high``, ``quantity``) with what exists so far; the
calibration factor is fitted only when both calibration configurations are measured, and held-out
predictions are scaled by it only then. The interval of each prediction is the probe's bootstrap
interval widened on both sides by the calibration factor's own scatter (the larger ratio of a
calibration configuration's factor to their geometric mean), as ``advise`` prints it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "critical_batch_validation"
RUNS = REPO / "runs" / "critical_batch_validation"
RECIPE = "goyal2017_fashion_mnist_28px"
VAL_SIZE = 5000
POINTS = 2
"""Branch points per configuration: the end of the first epoch (or of warmup) and just before the
horizon (the anchor study adds two between them for width16)."""
BATCH_SIZES = "128,256,512,1024,2048"
BUDGET_IMAGES = 32768
MAX_DOUBLINGS = 2
"""Doublings of the branch budget per point in ``measure`` (the plan's rule)."""
RESOLVE_DOUBLINGS = 3
"""Doublings in ``resolve``, for a point still unresolved after :data:`MAX_DOUBLINGS` (amendment of 2026-12-08)."""

# name: (role, recipe, overrides): fixed 2026-12-07 before any of their runs (docs/noise_scale.md);
# ``measure`` takes them in this order (the cheapest first).
CONFIGS = {
    "width16": ("calibration", RECIPE, []),
    "width8": ("calibration", RECIPE, ["model.width=8"]),
    # width64 was replaced by stride2 on 2026-12-07 with no prediction (its probe stopped at step 20): its
    # yardstick would take about 9 hours of this 2-core machine (16x width16's FLOPs per image).
    "stride2": ("held_out", "goyal2017_fashion_mnist", []),
    "subset15000": ("held_out", RECIPE, ["data.train_subset=15000"]),
    "lamb": ("held_out", "lamb_fashion_mnist", []),
    "synthetic": (
        "held_out",
        RECIPE,
        ["data.name=synthetic", "data.image_size_px=28", "data.synthetic.train_samples=60000"],
    ),
    "blocks2": ("held_out", RECIPE, ["model.blocks_per_stage=2"]),
    "width32": ("held_out", RECIPE, ["model.width=32"]),
}
# The anchor study (benchmarks/critical_batch_anchor.sh) is width16's measurement.
RUN_DIRS = {"width16": (REPO / "runs/critical_batch_anchor/reference", REPO / "runs/critical_batch_anchor/branches")}


def _py() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _cfg(name: str):
    sys.path.insert(0, str(REPO / "src"))
    from largebatch.api import load_config

    _, recipe, overrides = CONFIGS[name]
    return load_config(recipe, [*overrides, f"data.val_size={VAL_SIZE}"])


def probe_epochs(name: str) -> float:
    """advise's default of 2 epochs, or the warmup plus an epoch where the warmup is longer (LAMB's
    2.125 epochs)."""
    warmup = _cfg(name).schedule.warmup_epochs
    return 2.0 if warmup < 1.5 else float(math.ceil(warmup + 1))


def layout(name: str) -> dict:
    """Steps per epoch, warmup, horizon and the branch points of the reference run: POINTS evenly
    spaced from the first epoch's end (or the end of warmup, if later) to just before the horizon.
    The reference run checkpoints every ``checkpoint_steps[0]`` steps and at its stop (the last point);
    the nearest checkpoint to each point is branched."""
    from largebatch.study.advise import _train_images, probe_layout

    cfg = _cfg(name)
    lay = probe_layout(cfg, probe_epochs(name), None)
    per_epoch, horizon = lay["steps_per_epoch"], lay["horizon_step"]
    first = max(per_epoch, lay["warmup_steps"] + 1)
    last = horizon - max(1, per_epoch // 4)
    steps = sorted({round(first + i * (last - first) / (POINTS - 1)) for i in range(POINTS)})
    return {
        **lay,
        "checkpoint_steps": steps,
        "train_images": _train_images(cfg),
        "global_batch": cfg.train.global_batch_size,
    }


def _dirs(name: str) -> tuple[Path, Path]:
    return RUN_DIRS.get(name, (RUNS / name / "reference", RUNS / name / "branches"))


def _advise_cmd(name: str, out: Path, *flags: str) -> list[str]:
    """``largebatch advise`` on configuration ``name`` into ``out``, no cost model, its probe length."""
    _, recipe, overrides = CONFIGS[name]
    cmd = [_py(), "-m", "largebatch", "advise", "--recipe", recipe, "--out", str(out), "--preset", ""]
    cmd += ["--probe-epochs", f"{probe_epochs(name):g}", *flags]
    return cmd + sum((["--set", s] for s in [*overrides, f"data.val_size={VAL_SIZE}"]), [])


def probe(names: list[str]) -> None:
    for name in names:
        target = RESULTS / "probes" / f"{name}.json"
        if target.is_file():
            continue
        role = CONFIGS[name][0]
        out = RUNS / name / "probe"
        if out.exists():
            shutil.rmtree(out)  # an unfinished probe starts again (a few minutes)
        cmd = _advise_cmd(name, out)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"probe {name} failed:\n{proc.stderr[-2000:]}")
        advice = json.loads((out / "advice.json").read_text())
        from largebatch.study.noise_probe import step_estimates
        from largebatch.train.metrics import read_metrics

        estimates = {d.name: step_estimates(read_metrics(d)) for d in sorted(out.glob("seed*"))}
        record = {"name": name, "role": role, "probe_wall_s": time.perf_counter() - t0, "advice": advice}
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps({**record, "estimates": estimates}, indent=1))
        print(
            f"{name}: run-level {advice['prediction']['run_level_b']:.0f} images ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


def hessian(names: list[str]) -> None:
    """The Hessian-corrected ratio B_noise / B_simple for each configuration: one more probe (seed 0,
    one process of one thread, so it can share the machine with the yardstick) with
    ``advise --hessian``; its ratio at the probe's final weights goes to ``RESULTS/probes_hessian/``
    and multiplies the recorded two-seed probe's run-level average in :func:`report`."""
    for name in names:
        target = RESULTS / "probes_hessian" / f"{name}.json"
        if target.is_file():
            continue
        out = RUNS / name / "hessian_probe"
        if out.exists():
            shutil.rmtree(out)  # an unfinished probe starts again (minutes)
        cmd = _advise_cmd(name, out, "--probe-seeds", "1", "--nproc", "1", "--hessian")
        cmd += ["--set", "train.threads_per_worker=1"]
        t0, c0 = time.perf_counter(), _cpu_s()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(f"hessian probe {name} failed:\n{proc.stderr[-2000:]}")
        advice = json.loads((out / "advice.json").read_text())
        record = {
            "name": name,
            "hessian": advice["hessian"],
            "single_seed_run_level_b": advice["prediction"]["run_level_b"],
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(_cpu_s() - c0, 1),
            "cpu": _cpu_kind(),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{name}: Hessian ratio {advice['hessian']['ratio']:.3f} ({record['wall_s']:.0f} s)", flush=True)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished children, grandchildren included."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(names: list[str]) -> None:
    """The yardstick on each configuration in turn; each one's wall and CPU time (this invocation's
    share, also when stopped by SIGTERM or Ctrl-C) is appended to ``RESULTS/cpu_time.jsonl``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in names:
        if (RESULTS / "measured" / f"{name}.json").is_file():
            continue  # measured and recorded (delete the file to measure again): runs/ need not survive a session
        _timed(name, _measure_one, name)


def _timed(label: str, work, *args) -> None:
    """Run ``work(*args)`` and append its wall and CPU time (also when stopped by SIGTERM or Ctrl-C) to
    ``RESULTS/cpu_time.jsonl`` as ``label``."""
    t0, c0, done = time.time(), _cpu_s(), False
    try:
        work(*args)
        done = True
    finally:
        RESULTS.mkdir(parents=True, exist_ok=True)
        with open(RESULTS / "cpu_time.jsonl", "a") as f:
            record = {
                "config": label,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
                "wall_s": round(time.time() - t0, 1),
                "cpu_s": round(_cpu_s() - c0, 1),
                "finished": done,
                "cpu": _cpu_kind(),
            }
            f.write(json.dumps(record) + "\n")


def _cpu_kind() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def _measure_one(name: str, max_doublings: int = MAX_DOUBLINGS) -> None:
    _, recipe, overrides = CONFIGS[name]
    ref, branches = _dirs(name)
    lay = layout(name)
    # fp32 on every CPU kind: the calibration configurations were measured on an AVX2 VM, where
    # train.precision=auto means fp32; on an AVX-512 BF16 VM auto would switch the held-out ones to bf16
    sets = [*overrides, f"data.val_size={VAL_SIZE}", "train.precision=fp32"]
    if not (ref / "summary.json").is_file():
        cmd = [_py(), "-m", "largebatch", "train", "--recipe", recipe, "--out", str(ref)]
        if (ref / "checkpoints").is_dir():
            cmd += ["--resume", "auto"]
        step = lay["checkpoint_steps"][0]
        sets_ref = [
            *sets,
            f"train.checkpoint_every_steps={step}",
            "train.keep_checkpoints=50",
            f"train.stop_after_images={lay['checkpoint_steps'][-1] * lay['global_batch']}",
            "train.eval_every_epochs=100",
        ]
        subprocess.run(cmd + sum((["--set", s] for s in sets_ref), []), check=True)
    have = sorted(int(p.stem.removeprefix("ckpt_step")) for p in (ref / "checkpoints").glob("ckpt_step*.pt"))
    steps = [min(have, key=lambda h: abs(h - s)) for s in lay["checkpoint_steps"]]
    cmd = [_py(), "-m", "largebatch", "critical-batch", str(ref), "--out", str(branches), "--nproc", "1"]
    cmd += ["--steps", ",".join(map(str, sorted(set(steps)))), "--batch-sizes", BATCH_SIZES]
    cmd += ["--budget-images", str(BUDGET_IMAGES), "--parallel", "2", "--max-doublings", str(max_doublings)]
    subprocess.run(cmd + sum((["--set", s] for s in sets), []), check=True)
    (RESULTS / "measured").mkdir(parents=True, exist_ok=True)
    shutil.copy(branches / "critical_batch.json", RESULTS / "measured" / f"{name}.json")


def resolve(names: list[str]) -> None:
    """The plan's amendment of 2026-12-08 (docs/noise_scale.md, "Held-out measurements"), written
    before any of its runs: every measured configuration with a point the yardstick did not resolve in
    :data:`MAX_DOUBLINGS` doublings gets one more (:data:`RESOLVE_DOUBLINGS` in all), the same rule for
    every configuration, run after all of them are measured. The branches already run are reused; the
    earlier record is kept as ``measured/NAME_before_resolve.json``. Wall and CPU time as ``measure``."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    for name in names:
        path = RESULTS / "measured" / f"{name}.json"
        if not _unresolved(name) or not path.is_file():
            continue
        if _tried_resolve(name):
            continue  # the extra doubling has run: still unresolved, reported as such
        before = RESULTS / "measured" / f"{name}_before_resolve.json"
        if not before.is_file():
            shutil.copy(path, before)
        _timed(f"{name}_resolve", _measure_one, name, RESOLVE_DOUBLINGS)


def _tried_resolve(name: str) -> bool:
    """Whether ``resolve`` has finished on ``name`` (its record in cpu_time.jsonl says so)."""
    path = RESULTS / "cpu_time.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return any(json.loads(x).get("config") == f"{name}_resolve" and json.loads(x).get("finished") for x in lines if x)


def _measured(name: str, lay: dict) -> tuple[float, float, float] | None:
    """The yardstick's B_noise averaged over [end of warmup, horizon] (with the low and high ends of
    its points' ranges averaged the same way), or None when not measured."""
    from largebatch.study.branch import run_level_b_noise

    path = RESULTS / "measured" / f"{name}.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    out = []
    for key in ("b_noise", "b_noise_low", "b_noise_high"):
        value = run_level_b_noise(
            [(p["step"], p.get(key)) for p in report["points"]],
            report["reference_batch"],
            start=lay["warmup_steps"] + 1,
            end=lay["horizon_step"],
        )
        if value is None:
            return None
        out.append(value)
    return out[0], out[1], out[2]


def _unresolved(name: str) -> list[int]:
    """The steps of the measured points of ``name`` whose B_noise the yardstick did not resolve."""
    path = RESULTS / "measured" / f"{name}.json"
    if not path.is_file():
        return []
    return [p["step"] for p in json.loads(path.read_text())["points"] if p.get("b_noise") is None]


STEPS_FIT = (394.0, 80.0)
"""The tuned study's fit of steps to 90% validation top-1 on width16 (docs/results.md): B_noise, 1 sd."""
ANCHOR = REPO / "benchmarks" / "results" / "critical_batch_anchor"


def anchor() -> dict | None:
    """The anchor check: width16's yardstick B_noise averaged over the run against the steps fit;
    within 1.5x passes. Its points: width16's two validation points (``measured/width16.json``), the
    point at the end of warmup and the two middle points (benchmarks/critical_batch_anchor.sh) as far
    as they exist. Two averages: over the validation's stretch (end of warmup to the horizon) and
    over the whole run to the horizon (the first point's value held back to step 1), the stretch the
    steps fit's runs cover. Written to ``ANCHOR/anchor_check.json``; None without width16's points."""
    from largebatch.study.branch import run_level_b_noise

    sources = [RESULTS / "measured" / "width16.json", ANCHOR / "warmup_point" / "critical_batch.json"]
    sources.append(ANCHOR / "critical_batch.json")
    points: dict = {}
    used = []
    for path in sources:
        if path.is_file():
            rep = json.loads(path.read_text())
            used.append(str(path.relative_to(REPO)))
            for p in rep["points"]:
                points.setdefault(p["step"], p)
    if not used or not (RESULTS / "measured" / "width16.json").is_file():
        return None
    ref_batch = rep["reference_batch"]
    lay = layout("width16")
    rows = [points[s] for s in sorted(points)]

    def average(key: str, start: int) -> float | None:
        return run_level_b_noise(
            [(p["step"], p.get(key)) for p in rows], ref_batch, start=start, end=lay["horizon_step"]
        )

    values = [average(key, lay["warmup_steps"] + 1) for key in ("b_noise", "b_noise_low", "b_noise_high")]
    whole = average("b_noise", 1)
    out = {
        "reports": used,
        "points": [{"step": p["step"], "b_noise": p["b_noise"], "b_noise_clock": p.get("b_noise_clock")} for p in rows],
        "branching_b_noise": values[0],
        "branching_low": values[1],
        "branching_high": values[2],
        "branching_b_noise_from_step_1": whole,
        "steps_fit_b_noise": STEPS_FIT[0],
        "steps_fit_sd": STEPS_FIT[1],
        "ratio": values[0] / STEPS_FIT[0] if values[0] else None,
        "within_1_5x": bool(values[0]) and 1 / 1.5 <= values[0] / STEPS_FIT[0] <= 1.5,
    }
    (ANCHOR / "anchor_check.json").write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"anchor: branching B_noise over the run {values[0]} (from step 1: {whole}) against the steps fit "
        f"{STEPS_FIT[0]:g} +- {STEPS_FIT[1]:g}"
    )
    return out


def report() -> None:
    anchor()
    rows = {}
    for name, (role, recipe, overrides) in CONFIGS.items():
        probe_path = RESULTS / "probes" / f"{name}.json"
        pred = json.loads(probe_path.read_text())["advice"]["prediction"] if probe_path.is_file() else None
        rows[name] = {
            "role": role,
            "recipe": recipe,
            "overrides": overrides,
            "pred": pred,
            "meas": _measured(name, layout(name)),
            "hess": json.loads(h.read_text())["hessian"]
            if (h := RESULTS / "probes_hessian" / f"{name}.json").is_file()
            else None,
        }
    calib = [r for r in rows.values() if r["role"] == "calibration"]
    kappa, spread = None, 1.0
    if all(r["pred"] and r["meas"] for r in calib):
        factors = [r["meas"][0] / r["pred"]["run_level_b"] for r in calib]
        kappa = math.exp(sum(math.log(f) for f in factors) / len(factors))
        # the factor's own scatter: each configuration's factor lies within this ratio of their mean
        spread = max(max(f / kappa, kappa / f) for f in factors)

    # The Hessian-corrected prediction (advise --hessian): the same run-level average times the ratio
    # B_noise / B_simple at the Hessian probe's final weights, with its own factor fitted the same way.
    def corrected(r):
        h = r["hess"]
        return r["pred"]["run_level_b"] * h["ratio"] if r["pred"] and h and math.isfinite(h["ratio"]) else None

    kappa_h, spread_h = None, 1.0
    if all(corrected(r) and r["meas"] for r in calib):
        factors = [r["meas"][0] / corrected(r) for r in calib]
        kappa_h = math.exp(sum(math.log(f) for f in factors) / len(factors))
        spread_h = max(max(f / kappa_h, kappa_h / f) for f in factors)
    out = []
    for name, r in rows.items():
        p, m = r["pred"], r["meas"]
        c = corrected(r)
        scale_h = (kappa_h if kappa_h is not None else 1.0) * (c / p["run_level_b"]) if c else None
        scale = kappa if kappa is not None else 1.0
        out.append(
            {
                "name": name,
                "config": {"recipe": r["recipe"], "overrides": r["overrides"]},
                "role": r["role"],
                "quantity": "B_noise",
                "calibration": kappa,
                "predicted": p["run_level_b"] * scale if p else None,
                # the probe's bootstrap interval (recorded as predicted_low/high before the spread
                # existed), rescaled to this calibration and widened by the factor's scatter
                "predicted_low": p.get("sampling_low", p["predicted_low"]) / p["calibration"] * scale / spread
                if p
                else None,
                "predicted_high": p.get("sampling_high", p["predicted_high"]) / p["calibration"] * scale * spread
                if p
                else None,
                "calibration_spread": spread,
                "hessian_ratio": r["hess"]["ratio"] if r["hess"] else None,
                "hessian_calibration": kappa_h,
                "hessian_predicted": p["run_level_b"] * scale_h if scale_h else None,
                "hessian_predicted_low": p.get("sampling_low", p["predicted_low"])
                / p["calibration"]
                * scale_h
                / spread_h
                if scale_h
                else None,
                "hessian_predicted_high": p.get("sampling_high", p["predicted_high"])
                / p["calibration"]
                * scale_h
                * spread_h
                if scale_h
                else None,
                # points the yardstick did not resolve (the smallest batch's reduction under its
                # threshold after the budget's doublings): the run-level average is then not measured
                "measured_unresolved_steps": _unresolved(name),
                "measured": m[0] if m else None,
                "measured_low": m[1] if m else None,
                "measured_high": m[2] if m else None,
            }
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (REPO / "benchmarks" / "results" / "critical_batch_validation.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| config | role | predicted (interval) | measured (range) | ratio | Hessian-corrected (interval) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for o in out:
        pred = (
            "-"
            if o["predicted"] is None
            else f"{o['predicted']:,.0f} ({o['predicted_low']:,.0f}-{o['predicted_high']:,.0f})"
        )
        meas = (
            f"not resolved at step(s) {o['measured_unresolved_steps']}"
            if o["measured"] is None and o["measured_unresolved_steps"]
            else "-"
            if o["measured"] is None
            else f"{o['measured']:,.0f} ({o['measured_low']:,.0f}-{o['measured_high']:,.0f})"
        )
        ratio = "-" if o["predicted"] is None or o["measured"] is None else f"{o['predicted'] / o['measured']:.2f}"
        hp = o["hessian_predicted"]
        hess = (
            "-" if hp is None else f"{hp:,.0f} ({o['hessian_predicted_low']:,.0f}-{o['hessian_predicted_high']:,.0f})"
        )
        h_ratio = "-" if hp is None or o["measured"] is None else f"{hp / o['measured']:.2f}"
        print(f"| {o['name']} | {o['role']} | {pred} | {meas} | {ratio} | {hess} | {h_ratio} |")
    print(
        f"calibration factor: {kappa if kappa is not None else 'not fitted (calibration configurations not measured)'}"
        f"; its spread: {spread:.3f}x; Hessian-corrected: {kappa_h if kappa_h is not None else 'not fitted'}, "
        f"spread {spread_h:.3f}x"
    )
    held = [o for o in out if o["role"] == "held_out" and o["measured"] and o["predicted"]]
    for o in out:
        if o["role"] == "held_out" and o["measured_unresolved_steps"]:
            print(f"held out, {o['name']}: measured but not resolved at step(s) {o['measured_unresolved_steps']}")
    for key in ("predicted", "hessian_predicted"):
        both = [o for o in held if o[key]]
        if both:
            err = math.exp(sum(abs(math.log(o[key] / o["measured"])) for o in both) / len(both))
            within = sum(1 / 2 <= o[key] / o["measured"] <= 2 for o in both)
            covered = sum(o[key + "_low"] <= o["measured"] <= o[key + "_high"] for o in both)
            print(
                f"held out, {key}: {len(both)} measured; geometric-mean error {err:.2f}x; within 2x: {within}; "
                f"interval covers: {covered}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=("probe", "hessian", "measure", "resolve", "report", "layout", "anchor"))
    ap.add_argument("--only", nargs="*", choices=list(CONFIGS), default=None)
    args = ap.parse_args()
    names = args.only or list(CONFIGS)
    sys.path.insert(0, str(REPO / "src"))
    if args.step == "probe":
        probe(names)
    elif args.step == "hessian":
        hessian(names)
    elif args.step == "measure":
        measure(names)
    elif args.step == "resolve":
        resolve(names)
    elif args.step == "anchor":
        anchor()
    elif args.step == "layout":
        for name in names:
            print(name, layout(name))
    else:
        report()


if __name__ == "__main__":
    main()
