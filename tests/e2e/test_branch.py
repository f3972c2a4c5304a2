"""Steps to a validation target, a fixed image budget, starting from a checkpoint's weights, and
``largebatch critical-batch`` branching from checkpoints (real Fashion-MNIST, a 2,000-image subset)."""

import json
import math
import os
import sys

import pytest
import torch

import clirun
from largebatch.study.branch import BEFORE_FIRST
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


def test_critical_batch_decays_each_branch_to_zero_at_four_budgets_after_an_lr_grid(reference, tmp_path):
    steps = sorted(int(p.stem.removeprefix("ckpt_step")) for p in (reference / "checkpoints").glob("*.pt"))
    out = tmp_path / "cb"
    cmd = [sys.executable, "-m", "largebatch", "critical-batch", str(reference), "--steps", str(steps[0])]
    cmd += ["--batch-sizes", "64,256", "--budget-images", "2048", "--lr-multipliers", "1", "--max-widenings", "0"]
    cmd += ["--seeds", "0,1", "--min-reduction", "0", "--max-doublings", "0", "--parallel", "2", "--out", str(out)]
    cmd += ["--set", "data.train_subset=2000", "--set", "data.test_subset=500"]
    cmd += ["--set", "train.bn.precise_batches=4"]  # a user's --set wins over the branch's own settings
    proc = clirun.subprocess_run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "critical_batch.json").read_text())
    (point,) = report["points"]
    assert point["step"] == steps[0] and [b["batch"] for b in point["branches"]] == [64, 256]
    assert point["budgets_images"] == [256, 512, 1024, 2048] and point["grid_budget_images"] == 1024
    ref_lr = point["lr"]
    for b in point["branches"]:
        # the grid, on seed 0 at half the budget: the linear rule's LR and the reference's own
        assert set(b["lrs"]) == {"ref", "x1"}
        assert b["lrs"]["ref"]["lr"] == pytest.approx(ref_lr)
        assert b["lrs"]["x1"]["lr"] == pytest.approx(ref_lr * b["batch"] / 128)
        grid = {tag: cell["val_loss_at_grid_budget"]["0"] for tag, cell in b["lrs"].items()}
        assert set(b["lrs"]["x1"]["val_loss_at_grid_budget"]) == {"0"}  # seed 1 runs no grid
        chosen = b["chosen_lr"]
        assert chosen == min(grid, key=grid.get)
        peak = b["lrs"][chosen]["lr"]
        # then every budget on every seed at the LR that won
        assert set(b["val_loss_by_budget"]) == {"0", "1"}
        for seed in (0, 1):
            assert set(b["val_loss_by_budget"][str(seed)]) == {"256", "512", "1024", "2048"}
            for budget in (256, 512, 1024, 2048):
                run = out / f"step{steps[0]:08d}" / f"d2z_budget{budget}" / f"b{b['batch']:06d}_{chosen}_s{seed}"
                n = budget // b["batch"]
                summary = json.loads((run / "summary.json").read_text())
                config = json.loads((run / "config.json").read_text())
                assert summary["steps"] == n and config["train"]["seed"] == seed
                s = config["schedule"]
                assert (s["name"], s["poly"]["power"], s["end_lr"], s["warmup_epochs"]) == ("poly", 1, 0, 0)
                assert round(s["decay_end_epochs"] * (1600 // b["batch"])) == n  # decays over its own steps
                assert config["train"]["val_at_steps"] == [n] and config["train"]["bn"]["statistics"] == "precise"
                assert config["train"]["bn"]["precise_batches"] == 4
                assert config["train"]["threads_per_worker"] == max(1, (os.cpu_count() or 1) // 2)  # 2 side by side
                records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
                evals = [r for r in records if r["kind"] == "eval" and r.get("val_loss") is not None]
                assert [r["step"] for r in evals] == [n]  # one evaluation, at the end
                assert b["val_loss_by_budget"][str(seed)][str(budget)] == pytest.approx(evals[0]["val_loss"])
                # linear from the peak toward 0 over the branch's own n steps (MLPerf's poly form: D = n + 1)
                for r in (r for r in records if r["kind"] == "train" and r.get("lr") is not None):
                    assert r["lr"] == pytest.approx(peak * (1 - (r["step"] - 1) / (n + 1)))
        # the batch's reduction: the seeds' mean at the full budget
        mean = sum(b["val_loss_by_budget"][x]["2048"] for x in ("0", "1")) / 2
        assert b["best_val_loss"] == pytest.approx(mean)
        assert b["reduction"] == pytest.approx(point["val_loss_at_checkpoint"] - mean)
    # the grid's run at half the budget is the seed-0 curve's point there: not run twice
    assert len(list((out / f"step{steps[0]:08d}" / "d2z_budget1024").glob("b000064_*_s0"))) == 2
    # the checkpoint's own loss: one step at an LR of 1e-30 with the branches' precise BN
    ckpt_eval = out / f"step{steps[0]:08d}" / "checkpoint_eval"
    ckpt_cfg = json.loads((ckpt_eval / "config.json").read_text())
    assert ckpt_cfg["optim"]["base_lr"] == 1e-30 and ckpt_cfg["train"]["bn"]["statistics"] == "precise"
    val = [json.loads(x) for x in (ckpt_eval / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert point["val_loss_at_checkpoint"] == pytest.approx(min(e["val_loss"] for e in val if e.get("val_loss")))
    # levels from the smallest batch's shortest budget's loss (the seeds' mean) down to its full budget's
    small = point["branches"][0]["val_loss_by_budget"]
    top, bottom = ((small["0"][e] + small["1"][e]) / 2 for e in ("256", "2048"))
    assert list(point["levels"]) == ["0.25", "0.5", "0.75"]
    for f in (0.25, 0.5, 0.75):
        assert point["levels"][f"{f:g}"]["val_loss"] == pytest.approx(top - f * (top - bottom))
    for level in point["levels"].values():
        for images in level["images"].values():
            assert len(images) == 2 and all(e is None or e == BEFORE_FIRST or 256 <= e <= 2048 for e in images)
    assert "B_noise" in proc.stdout and "tolerance-based" in proc.stdout and "clock" in proc.stdout
    assert set(point["b_noise_clock_per_batch"]) <= {"256"}  # the larger batch, read on batch 64's curve
    for args, fragment in (  # refused before any branch: one line, exit 2
        (["--steps", "99999"], "no checkpoint at step(s) [99999]"),
        (["--lr-multipliers", "0,1"], "--lr-multipliers"),
        (["--parallel", "0"], "--parallel 0"),
        (["--steps", str(steps[0]), "--batch-sizes", "64,256", "--budget-images", "1024"], "--budget-images 1024"),
    ):
        bad = clirun.run("critical-batch", str(reference), *args, timeout=120)
        assert bad.returncode == 2 and fragment in bad.stderr and "Traceback" not in bad.stderr, args


def test_images_to_a_level_and_the_fit_of_eq_2_11():
    from largebatch.study.branch import (
        clock_b_noise,
        fit_b_noise_levels,
        images_to_level_log,
        run_level_b_noise,
        tolerance_critical,
    )

    curve = [(256, 2.0), (1024, 1.0), (2048, 0.8)]  # interpolated linearly in log images
    assert images_to_level_log(curve, 1.5) == pytest.approx(512) and images_to_level_log(curve, 0.9) == pytest.approx(
        2**10.5
    )
    assert images_to_level_log(curve, 0.5) is None and images_to_level_log(curve, 2.0) == 256
    assert math.isnan(images_to_level_log(curve, 2.5)) and images_to_level_log([], 1.0) is None
    # the joint fit over levels: E_min 1000 and 3000 at two levels, B_noise 400, from 4,096-image budgets
    batches = [64, 128, 256, 512, 1024]
    images = [1000 * (1 + b / 400) for b in batches]
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
    # the clock: batch 64's annealed loss falls by 0.5 per doubling of its images, 125 to 1,000; under
    # B_noise = 400 batch B needs r = (1 + B/400) / (1 + 64/400) times the images for a loss
    clock_curve = [(125.0, 2.0), (250.0, 1.5), (500.0, 1.0), (1000.0, 0.5)]
    finals = {64: 0.5}
    for b in (128, 256, 512):
        r = (1 + b / 400) / (1 + 64 / 400)
        finals[b] = 2.0 - 0.5 * math.log2(1000 / r / 125)  # what batch 64 reached with 1000 / r images
    fit, each = clock_b_noise(64, clock_curve, 1000, finals)
    assert fit == pytest.approx(400, rel=0.05) and all(v == pytest.approx(400) for v in each.values())
    assert clock_b_noise(64, clock_curve, 1000, {64: 0.5, 128: 0.5})[1] == {128: float("inf")}  # no cost
    assert clock_b_noise(64, clock_curve, 1000, {64: 0.5, 128: 0.4}) == (None, {})  # never reached by 64
    assert clock_b_noise(64, clock_curve, 1000, {64: 0.5, 128: 2.5}) == (None, {})  # above its shortest budget
    # tolerance 0.2: E(B) <= 1.2 E(64) = 1392 holds at 128 (1320), not at 256 (1640): log2-interpolated
    crit, bound = tolerance_critical(batches, images, 0.2)
    assert crit == pytest.approx(2 ** (7 + (1392 - 1320) / (1640 - 1320))) and not bound
    assert tolerance_critical(batches, [1000.0] * 5, 0.2) == (1024.0, True)
    assert tolerance_critical(batches, [None, 1.0, 1.0, 1.0, 1.0], 0.2) is None
    # a constant B_noise over the steps averages to itself
    assert run_level_b_noise([(100, 300.0), (400, 300.0)], 512) == pytest.approx(300)
    assert run_level_b_noise([(100, 300.0)], 512) is None


def test_the_budget_is_doubled_only_while_a_doubling_can_help():
    from largebatch.study.branch import budget_verdict

    assert budget_verdict(0.06, 0.5, 0.05, 0, 2) == "enough"
    assert budget_verdict(0.04, 0.5, 0.05, 0, 2) == "double"
    assert budget_verdict(0.04, 0.5, 0.05, 2, 2) == "exhausted"
    # a checkpoint already below the threshold (a learned task): no budget can reduce it by 0.05
    assert budget_verdict(0.0005, 0.001, 0.05, 0, 2) == "hopeless"
    assert budget_verdict(-0.001, 0.001, 0.05, 0, 3) == "hopeless"
