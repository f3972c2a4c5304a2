"""Steps to a validation target, a fixed image budget, starting from a checkpoint's weights, and
``largebatch critical-batch`` branching from checkpoints (real Fashion-MNIST, a 2,000-image subset)."""

import json
import os
import sys

import pytest
import torch

import clirun
from largebatch.study.branch import critical_from_reductions, eval_steps
from largebatch.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.e2e

SUBSET = [
    "--set",
    "data.train_subset=2000",
    "--set",
    "data.test_subset=500",
    "--set",
    "data.val_size=400",
    "--set",
    "train.log_every_steps=2",
    "--set",
    "optim.base_lr=0.1",
    "--set",
    "train.noise_scale=false",
    "--set",
    "train.eval_every_epochs=1",
]


def train(out, *sets, nproc=1, resume=False):
    cmd = [sys.executable, "-m", "largebatch", "train", "--nproc", str(nproc), "--out", str(out), *SUBSET]
    for item in sets:
        cmd += ["--set", item]
    if resume:
        cmd += ["--resume", "auto"]
    proc = clirun.subprocess_run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(out, "train.epochs=2", "train.global_batch_size=128", "train.keep_checkpoints=4")
    return out


def test_stop_at_the_validation_target_records_steps_and_a_resume_does_nothing(reference, tmp_path):
    evals = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    curve = [(e["step"], e["val_top1"]) for e in evals if e["kind"] == "eval"]
    target = curve[0][1] - 0.01  # reached at the first evaluation of a run evaluating every 3 steps
    out = tmp_path / "stop"
    s = train(
        out,
        "train.epochs=2",
        "train.global_batch_size=128",
        "train.val_every_steps=3",
        f"train.stop_at_val_top1={target}",
    )
    val = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(e for e in val if e["kind"] == "eval" and e["val_top1"] >= target)
    assert s["stopped_at_target"] and s["steps_to_val_target"] == first["step"] == s["steps"] < 2 * (1600 // 128)
    assert s["images_to_val_target"] == s["steps"] * 128 and s["top1"] > 0  # the test split evaluated at the stop
    again = train(
        out,
        "train.epochs=2",
        "train.global_batch_size=128",
        "train.val_every_steps=3",
        f"train.stop_at_val_top1={target}",
        resume=True,
    )
    assert again["steps"] == s["steps"]  # a finished run stays finished


def test_init_from_and_the_image_budget(reference, tmp_path):
    (ckpt, *_) = sorted((reference / "checkpoints").glob("ckpt_step*.pt"))
    out = tmp_path / "branch"
    s = train(
        out,
        f"train.init_from={ckpt}",
        "train.epochs=3",
        "train.global_batch_size=256",
        "train.stop_after_images=1024",
        "optim.base_lr=1e-30",
        "optim.weight_decay=0",
        "schedule.warmup_epochs=0",
    )
    assert s["stopped_at_budget"] and s["steps"] == 4 and s["init_from"] == str(ckpt)
    start, end = (
        load_checkpoint(ckpt)["model"],
        load_checkpoint(sorted((out / "checkpoints").glob("*.pt"))[-1])["model"],
    )
    for name, w in start.items():  # an LR of 1e-30 moves nothing: the run started from the checkpoint's weights
        if w.is_floating_point() and "running" not in name:
            assert torch.equal(w, end[name]), name
    with pytest.raises(AssertionError, match="train.init_from"):
        train(tmp_path / "bad", "train.init_from=/nonexistent.pt", "train.epochs=1")


def test_critical_batch_branches_an_lr_grid_and_seeds_on_the_same_budget(reference, tmp_path):
    steps = sorted(int(p.stem.removeprefix("ckpt_step")) for p in (reference / "checkpoints").glob("*.pt"))
    out = tmp_path / "cb"
    cmd = [
        sys.executable,
        "-m",
        "largebatch",
        "critical-batch",
        str(reference),
        "--steps",
        str(steps[0]),
        "--batch-sizes",
        "64,256",
        "--budget-images",
        "512",
        "--lr-multipliers",
        "0.5,1",
        "--max-widenings",
        "0",
        "--seeds",
        "0,1",
        "--evals-per-branch",
        "3",
        "--min-reduction",
        "0",
        "--max-doublings",
        "0",
        "--parallel",
        "2",
        "--out",
        str(out),
        "--set",
        "data.train_subset=2000",
        "--set",
        "data.test_subset=500",
    ]
    proc = clirun.subprocess_run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "critical_batch.json").read_text())
    (point,) = report["points"]
    assert point["step"] == steps[0] and [b["batch"] for b in point["branches"]] == [64, 256]
    assert [b["steps"] for b in point["branches"]] == [8, 2] and point["budget_images"] == 512
    ref_lr = point["lr"]
    for b in point["branches"]:  # the linear rule's LR x0.5 and x1 and the reference's own on seed 0 ...
        tags = ("ref", "x0.5", "x1")
        assert set(b["lrs"]) == set(tags)
        assert b["lrs"]["ref"]["lr"] == pytest.approx(ref_lr)
        for m in (0.5, 1):
            assert b["lrs"][f"x{m:g}"]["lr"] == pytest.approx(m * ref_lr * b["batch"] / 128)
        seed0 = {tag: b["lrs"][tag]["lowest_val_loss"]["0"] for tag in tags}
        best = min(seed0, key=seed0.get)
        # at batch 256, x0.5 is the reference's own LR: one run serves both
        same = b["batch"] == 256
        assert not (out / f"step{steps[0]:08d}" / "budget512" / "b000256_x0.5_s0").exists() or not same
        if same:
            assert seed0["x0.5"] == seed0["ref"]
        for tag in tags:  # ... and seed 1 only at seed 0's best LR
            assert set(b["lrs"][tag]["lowest_val_loss"]) == ({"0", "1"} if tag == best else {"0"})
            for seed in (0, 1):
                d = "ref" if same and tag == "x0.5" else tag
                run = out / f"step{steps[0]:08d}" / "budget512" / f"b{b['batch']:06d}_{d}_s{seed}"
                if seed == 1 and tag != best:
                    assert not run.exists() or (same and {tag, best} == {"ref", "x0.5"})
                    continue
                summary = json.loads((run / "summary.json").read_text())
                assert summary["steps"] == b["steps"]
                config = json.loads((run / "config.json").read_text())
                # log-spaced evaluations: the last step, its half, its quarter, ...
                assert config["train"]["seed"] == seed and config["train"]["val_at_steps"] == eval_steps(b["steps"], 3)
                evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                val_steps = sorted({e["step"] for e in evals if e["kind"] == "eval" and e.get("val_loss") is not None})
                assert val_steps == eval_steps(b["steps"], 3)
                assert config["train"]["bn"]["statistics"] == "precise"  # BN recomputed at each evaluation
                assert config["train"]["threads_per_worker"] == max(1, (os.cpu_count() or 1) // 2)  # 2 side by side
        # the batch's loss reduction is the seeds' mean at that LR
        mean = sum(b["lrs"][best]["lowest_val_loss"].values()) / 2
        assert b["best_val_loss"] == pytest.approx(mean)
    # the checkpoint's own loss: one step at an LR of 1e-30 with the branches' precise BN
    ckpt_eval = out / f"step{steps[0]:08d}" / "checkpoint_eval"
    ckpt_cfg = json.loads((ckpt_eval / "config.json").read_text())
    assert ckpt_cfg["optim"]["base_lr"] == 1e-30 and ckpt_cfg["train"]["bn"]["statistics"] == "precise"
    val = [json.loads(x) for x in (ckpt_eval / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert point["val_loss_at_checkpoint"] == pytest.approx(min(e["val_loss"] for e in val if e.get("val_loss")))
    # images to each level: per batch and seed, the fewest over the LRs, never beyond the budget
    for level in point["levels"].values():
        for images in level["images"].values():
            assert all(e is None or 0 <= e <= 512 for e in images) and len(images) == 2
    assert "B_noise" in proc.stdout and "tolerance-based" in proc.stdout and "clock" in proc.stdout
    assert set(point["b_noise_clock_per_batch"]) <= {"256"}  # the larger batch, read on batch 64's curve
    for args, fragment in (  # refused before any branch: one line, exit 2
        (["--steps", "99999"], "no checkpoint at step(s) [99999]"),
        (["--lr-multipliers", "0,1"], "--lr-multipliers"),
        (["--parallel", "0"], "--parallel 0"),
    ):
        bad = clirun.run("critical-batch", str(reference), *args, timeout=120)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr, args


def test_critical_batch_reading_of_reductions():
    # halving the reduction's share: 1.0, 0.95, 0.7 (below 80% of 1.0) -> between 256 and 512 on log2 B
    assert critical_from_reductions([128, 256, 512], [1.0, 0.95, 0.7], 0.2) == pytest.approx(2 ** (8 + 0.15 / 0.25))
    assert critical_from_reductions([128, 256], [1.0, 0.9], 0.2) == 256.0  # every batch passes: a lower bound
    assert critical_from_reductions([128, 256], [-0.1, 0.5], 0.2) is None  # the smallest batch did not learn
    assert critical_from_reductions([128, 256], [0.01, 0.005], 0.2, min_reduction=0.02) is None  # within the noise


def test_images_to_a_level_and_the_fit_of_eq_2_11():
    from largebatch.study.branch import (
        clock_b_noise,
        fit_b_noise,
        fit_b_noise_levels,
        images_to_level,
        run_level_b_noise,
        tolerance_critical,
    )

    curve = [(0, 2.0), (100, 1.5), (200, 1.0)]
    assert images_to_level(curve, 1.25) == pytest.approx(150) and images_to_level(curve, 0.9) is None
    assert images_to_level(curve, 2.5) == 0
    assert eval_steps(256, 8) == [2, 4, 8, 16, 32, 64, 128, 256] and eval_steps(16, 8) == [1, 2, 4, 8, 16]
    assert eval_steps(12, 3) == [3, 6, 12] and eval_steps(5, 3) == [2, 3, 5] and eval_steps(1, 4) == [1]
    # exact E(B) = E_min (1 + B / B_noise) with E_min = 1000, B_noise = 400
    batches = [64, 128, 256, 512, 1024]
    images = [1000 * (1 + b / 400) for b in batches]
    e_min, b_noise = fit_b_noise(batches, images)
    assert e_min == pytest.approx(1000) and b_noise == pytest.approx(400)
    assert fit_b_noise(batches, [1000.0] * 5) == (pytest.approx(1000), float("inf"))  # perfect scaling
    assert fit_b_noise([64], [1000.0]) is None
    # the joint fit over levels: E_min 1000 and 3000 at two levels, B_noise 400, from 4,096-image budgets
    obs = [(lv, b, e_min * (1 + b / 400)) for lv, e_min in ((0, 1000.0), (1, 3000.0)) for b in batches]
    assert fit_b_noise_levels(obs, 16384) == pytest.approx(400, rel=0.05)  # the log grid's resolution
    # a crossing within the first two steps is left out; a level never reached caps the fit from below
    noisy = [*obs, (0, 1024, 100.0)]
    assert fit_b_noise_levels(noisy, 16384) == pytest.approx(400, rel=0.05)
    flat = [(lv, b, 1000.0 * (lv + 1)) for lv in (0, 1) for b in batches]  # perfect scaling: infinite
    assert fit_b_noise_levels(flat, 16384) == float("inf")
    censored = [(0, 64, 1000.0), (0, 128, 1000.0), (0, 256, None)]  # 256 never reached 1000 within 1024
    assert fit_b_noise_levels(censored, 1024) < 10**7 and fit_b_noise_levels(censored[:2], 1024) == float("inf")
    assert fit_b_noise_levels([(0, 64, 1000.0)], 1024) is None  # one batch: no fit
    # the clock: batch 64's loss falls linearly from 2.0 by 0.001 per image over a 1,000-image budget;
    # under B_noise = 400 batch B needs r = (1 + B/400) / (1 + 64/400) times the images for a loss
    clock_curve = [(0.0, 2.0), (1000.0, 1.0)]
    finals = {64: 1.0}
    for b in (128, 256, 512):
        r = (1 + b / 400) / (1 + 64 / 400)
        finals[b] = 2.0 - 1000 / r / 1000  # what batch 64 reached with 1000 / r images
    fit, each = clock_b_noise(64, clock_curve, 1000, finals)
    assert fit == pytest.approx(400, rel=0.05) and all(v == pytest.approx(400) for v in each.values())
    assert clock_b_noise(64, clock_curve, 1000, {64: 1.0, 128: 1.0})[1] == {128: float("inf")}  # no cost
    assert clock_b_noise(64, clock_curve, 1000, {64: 1.0, 128: 0.5}) == (None, {})  # never reached by 64
    # tolerance 0.2: E(B) <= 1.2 E(64) = 1392 holds at 128 (1320), not at 256 (1640): log2-interpolated
    crit, bound = tolerance_critical(batches, images, 0.2)
    assert crit == pytest.approx(2 ** (7 + (1392 - 1320) / (1640 - 1320))) and not bound
    assert tolerance_critical(batches, [1000.0] * 5, 0.2) == (1024.0, True)
    assert tolerance_critical(batches, [None, 1.0, 1.0, 1.0, 1.0], 0.2) is None
    # a constant B_noise over the steps averages to itself
    assert run_level_b_noise([(100, 300.0), (400, 300.0)], 512) == pytest.approx(300)
    assert run_level_b_noise([(100, 300.0)], 512) is None
