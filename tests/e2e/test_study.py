"""``largebatch sweep`` (a small sweep on real Fashion-MNIST: table, CSV and figure; resuming it runs
nothing again) and ``largebatch advise`` (a probe on 2 workers logs the noise scale, and the advice
follows the empirical model's closed forms)."""

import csv
import json
import math
import sys

import pytest

import clirun
from largebatch.study.advise import Advice, against_measured, epochs_ratio
from largebatch.study.hessian_noise import CALIBRATION_HESSIAN
from largebatch.study.noise_probe import CALIBRATION, step_estimates, window_estimates
from largebatch.study.sweep import METHODS, SweepError, plan_sweep, run_config

pytestmark = pytest.mark.e2e

SUBSET = ["--set", "data.train_subset=2048", "--set", "data.test_subset=500"]


def largebatch(*args, timeout=600):
    return clirun.subprocess_run(
        [sys.executable, "-m", "largebatch", *args], capture_output=True, text=True, timeout=timeout
    )


def test_sweep_writes_table_and_figure_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    proc = largebatch(
        "sweep", "--methods", "goyal", "--batch-sizes", "128,512", "--epochs", "1", *SUBSET, "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["method"], int(r["global_batch_size"]), int(r["steps"])) for r in rows] == [
        ("goyal", 128, 16),
        ("goyal", 512, 4),
    ]  # 2048 // B steps in one epoch
    for r in rows:
        summary = json.loads((out / "goyal" / f"b{int(r['global_batch_size']):06d}_s0" / "summary.json").read_text())
        assert float(r["top1_mean"]) == pytest.approx(summary["top1"]) and summary["global_batch_size"] == int(
            r["global_batch_size"]
        )
    table = (out / "sweep.md").read_text()
    assert "| 128 |" in table and "| 512 |" in table and METHODS["goyal"].label in table
    assert (out / "sweep.png").stat().st_size > 10_000
    again = largebatch(
        "sweep", "--methods", "goyal", "--batch-sizes", "128,512", "--epochs", "1", *SUBSET, "--out", str(out)
    )
    assert again.returncode == 0 and "(2 already finished)" in again.stderr
    bad = largebatch("sweep", "--methods", "goyal,adam", "--batch-sizes", "128", "--epochs", "1", "--out", str(out))
    assert bad.returncode == 2 and "method 'adam' is unknown" in bad.stderr


def test_sweep_configs_scale_schedules_and_mikami_stages():
    cfg = run_config("mikami", 4096, 3, 3, [])
    stages = [(st.start_epoch, st.global_batch_size) for st in cfg.train.batch_schedule]
    assert stages == [(0, 1024), (1, 4096)]  # the recipe's 4x growth after a third of the epochs
    assert cfg.train.seed == 3 and cfg.train.epochs == 3
    goyal = run_config("goyal", 1024, 0, 3, [])
    assert goyal.schedule.warmup_epochs == pytest.approx(0.5 * 3 / 9) and goyal.schedule.decay_epochs == pytest.approx(
        [1.5, 7 / 3, 8.5 / 3]
    )
    assert run_config("no_scaling", 1024, 0, 3, []).optim.lr_scaling == "none"
    assert run_config("linear_no_warmup", 1024, 0, 3, []).schedule.warmup_epochs == 0
    with pytest.raises(SweepError, match="lars at global batch 100"):
        plan_sweep(["lars"], [100], [0], 3, [], 1)  # not a multiple of the BN batch of 32


def test_advice_follows_the_empirical_model():
    # E(B)/E(B0) = (1 + B/Bn) / (1 + B0/Bn): at B = Bn twice the minimum, against (1 + B0/Bn) at B0
    assert epochs_ratio(1000, 1000, 1000) == 1
    assert epochs_ratio(2000, 0, 2000) == pytest.approx(2)
    assert epochs_ratio(100, 10, 1000) == pytest.approx(1.1 / 1.01)
    text = _advice(3000.0).text()
    assert "predicted critical batch B_noise = 3,000 images (80% interval 2,000-4,500)" in text
    assert "B ~ step^0.50 over 3 windows" in text and "B_noise / 10 = 300" in text
    assert "1.50x the probe's own value" in text and "note: a flag" in text


def _advice(b_noise: float, measured=()) -> Advice:
    from largebatch.study.noise_probe import Prediction, Window

    windows = [Window(10 * i, 10 * i + 9, 2000.0, 1500.0, 2500.0, False) for i in (1, 2, 3)]
    pred = Prediction(
        windows,
        2000.0,
        1500.0,
        2500.0,
        0.5,
        100,
        3500.0,
        b_noise,
        1.0,
        b_noise,
        2000.0,
        4500.0,
        2000.0,
        4500.0,
        1.0,
        0.8,
        0,
    )
    pred.predicted = b_noise
    return Advice(
        recipe="r",
        global_batch_size=512,
        optimizer="sgd",
        probe_steps=40,
        probe_seeds=2,
        warmup_steps=9,
        window_steps=10,
        b_simple=2000.0,
        prediction=pred.as_dict() | {"extrapolation_factor": 1.5},
        critical_batch=b_noise,
        linear_scaling_max_batch=b_noise / 10,
        epochs_at_recipe_batch=9,
        epochs_at_critical_batch=9 * epochs_ratio(b_noise, 512, b_noise),
        flags=["a flag"],
        measured=list(measured),
    )


def test_advice_against_measured_critical_batches():
    report = {
        "points": [
            {"step": 107, "critical_batch": 512.0, "critical_batch_is_lower_bound": False, "b_simple": 67.0},
            {"step": 321, "critical_batch": None, "b_simple": 234.0},
            {"step": 642, "critical_batch": 2048.0, "critical_batch_is_lower_bound": True},
        ]
    }
    rows = against_measured(300.0, report)
    assert [r["ratio"] for r in rows] == [pytest.approx(300 / 512), None, pytest.approx(300 / 2048)]
    assert [r["within_2x"] for r in rows] == [True, False, False]  # 0.59x inside, 0.15x outside
    assert against_measured(1024.0, report)[0]["within_2x"] and not against_measured(1025.0, report)[0]["within_2x"]
    text = _advice(300.0, rows).text()
    assert (
        "measured B_noise at step 107 (branching, Merrill et al. 2025): 512; this advice's 300 is 0.59x it "
        "(within 2x); the B_simple that run logged at that step, 67, is 0.13x it" in text
    )
    assert (
        "step 321 (branching): not resolved" in text and ">= 2,048; this advice's 300 is 0.15x it (outside 2x)" in text
    )


def test_advise_probe_predicts_from_windows_of_micro_batch_estimates(tmp_path):
    out = tmp_path / "probe"
    measured = tmp_path / "critical_batch.json"
    measured.write_text(json.dumps({"points": [{"step": 16, "critical_batch": 256.0, "b_simple": 40.0}]}))
    bad = largebatch("advise", "--measured", str(tmp_path / "none.json"), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--measured" in bad.stderr and "no such file" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()  # refused before the probe
    for flag, value in (("--algorithm", "butterfly"), ("--preset", "dgx1")):
        wrong = largebatch("advise", flag, value, "--out", str(tmp_path / "wrong"))
        assert wrong.returncode == 2 and f"{flag} '{value}' is unknown" in wrong.stderr, wrong.stderr
        assert "Traceback" not in wrong.stderr and not (tmp_path / "wrong").exists()
    short = largebatch("advise", "--probe-epochs", "0.25", "--out", str(tmp_path / "short"))
    assert short.returncode == 2 and "end before two windows" in short.stderr and "--probe-epochs" in short.stderr
    assert len(short.stderr.strip().splitlines()) == 1 and not (tmp_path / "short").exists()
    few = largebatch("advise", "--hessian", "--hessian-small-batches", "1", "--out", str(tmp_path / "few"))
    assert few.returncode == 2 and "--hessian-small-batches 1" in few.stderr and not (tmp_path / "few").exists()
    single = largebatch("advise", "--measured-throughput", "32:100", "--out", str(tmp_path / "single"))
    assert single.returncode == 2 and "--measured-throughput: 1 measurement(s) at 1 per-GPU batch" in single.stderr
    assert len(single.stderr.strip().splitlines()) == 1 and not (tmp_path / "single").exists()
    unknown = largebatch("advise", "--recipe", "no_such_recipe", "--out", str(tmp_path / "unknown"))
    assert unknown.returncode == 2 and "no_such_recipe" in unknown.stderr and "Traceback" not in unknown.stderr
    proc = largebatch(
        "advise",
        "--probe-epochs",
        "1",
        "--set",
        "data.train_subset=4096",
        "--set",
        "data.test_subset=500",
        "--set",
        "train.global_batch_size=256",
        "--set",
        "train.log_every_steps=4",
        "--measured",
        str(measured),
        "--hessian",
        "--hessian-small-batches",
        "8",
        "--out",
        str(out),
    )  # 16 steps of 256 on 2 workers, 4 micro-batches of one BN group (32) each per worker
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "seed0" / "metrics.jsonl").read_text().splitlines()]
    other = [json.loads(line) for line in (out / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert [e[0] for e in step_estimates(records)] == list(range(1, 17))  # every step's estimate, logged in fours
    assert step_estimates(other) != step_estimates(records)  # two probes of different seeds, pooled
    estimates = step_estimates(records) + step_estimates(other)
    assert all(r.get("noise_scale_small_batch") == "micro_batch" for r in records if r["kind"] == "train")
    advice = json.loads((out / "advice.json").read_text())
    # warmup 1/3 of 16 steps per epoch: 5 steps; windows of 16 // 4 = 4 steps from step 6; the last,
    # steps 14-16, is shorter than 4 but not than half: its own window
    windows = window_estimates(estimates, window_steps=4, first_step=6)
    assert (
        [(w["first_step"], w["last_step"]) for w in advice["prediction"]["windows"]]
        == [(w.first_step, w.last_step) for w in windows]
        == [(6, 9), (10, 13), (14, 16)]
    )
    assert advice["b_simple"] == pytest.approx(windows[-1].b_simple)
    pred = advice["prediction"]
    assert pred["horizon_step"] == 48  # the linear decay's run of 6 epochs: half of it
    assert pred["predicted_low"] <= advice["critical_batch"] <= pred["predicted_high"]
    assert advice["linear_scaling_max_batch"] == pytest.approx(advice["critical_batch"] / 10)
    # the frozen calibration factor multiplies the run-level average, and the flags say so
    assert pred["calibration"] == CALIBRATION != 1.0
    # --hessian: tr(H Sigma) / G^T H G at each probe's final weights, from 8 small batches of one BN group
    h = advice["hessian"]
    assert [(r["small_batch"], r["small_batches"]) for r in h["per_seed"]] == [(32, 8), (32, 8)]
    assert h["per_seed"][0] != h["per_seed"][1] and all(r["trace"] > 0 for r in h["per_seed"])
    expected = math.sqrt(h["per_seed"][0]["ratio"] * h["per_seed"][1]["ratio"])
    assert math.isfinite(h["ratio"]) and h["ratio"] == pytest.approx(expected)
    assert h["predicted"] == pytest.approx(pred["run_level_b"] * h["ratio"] * CALIBRATION_HESSIAN)
    assert h["predicted_low"] <= h["predicted"] <= h["predicted_high"]
    assert "Hessian-corrected (tr(H Sigma) / G^T H G" in proc.stdout
    assert advice["critical_batch"] == pytest.approx(pred["run_level_b"] * CALIBRATION)
    assert any(f.startswith(f"calibrated: x{CALIBRATION:g}") for f in advice["flags"])
    assert any(f.startswith("validated range: the 28-px ResNet-8") for f in advice["flags"])
    assert any("decays within" in f for f in advice["flags"])
    cluster = advice["cluster"]
    assert cluster["preset"] == "h100_ndr" and cluster["gpus"] >= 1 and 0 < cluster["scaling_efficiency"] <= 1
    assert "/" in cluster["algorithm"] or cluster["gpus"] == 1  # auto: NCCL's (algorithm/protocol) choice
    # GPUs and time as a range: the critical batch's interval times the H100 stacks' two t(b) fits
    assert cluster["mode"] == "preset" and len(cluster["compute_models"]) == 2
    assert cluster["gpus_low"] <= cluster["gpus"] <= cluster["gpus_high"]
    assert cluster["train_s_low"] <= cluster["train_s"] <= cluster["train_s_high"]
    assert "compute in preset mode" in proc.stdout and "range over the critical batch's interval" in proc.stdout
    assert "predicted critical batch B_noise" in proc.stdout and f"x calibration {CALIBRATION:g}" in proc.stdout
    (row,) = advice["measured"]
    assert row["step"] == 16 and row["ratio"] == pytest.approx(advice["critical_batch"] / 256.0)
    assert "measured B_noise at step 16" in proc.stdout and f"is {row['ratio']:.2f}x it" in proc.stdout
