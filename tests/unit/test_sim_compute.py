"""Per-GPU compute t(b) = t0 + b / x_max (largebatch.sim.compute): the fit's closed forms, its
refusals, calibrated mode from run directories and pairs, and its use in the step model."""

from __future__ import annotations

import json

import pytest

from largebatch.sim import cli
from largebatch.sim.compute import ComputeModel, Throughput, fit_compute, measured_points
from largebatch.sim.presets import get_preset
from largebatch.sim.step import Workload, simulate_step
from largebatch.sim.validation import COMPUTE_CHECKS


def test_two_points_give_t0_and_x_max_exactly():
    # t(b) = 4 ms + b / 8,000: 16 -> 6 ms (2,666.7 img/s), 400 -> 54 ms (7,407.4 img/s)
    model = fit_compute([(16, 16 / 0.006), (400, 400 / 0.054)], "h")
    assert model.t0_s == pytest.approx(0.004) and model.x_max_images_per_s == pytest.approx(8000)
    assert model.images_per_s(32) == pytest.approx(32 / (0.004 + 32 / 8000))
    assert model.images_per_s(1e9) == pytest.approx(8000, rel=1e-4)  # x_max as b grows
    assert model.images_per_s(0.004 * 8000) == pytest.approx(4000)  # half of x_max at b = t0 x_max
    assert not model.t0_clamped and model.mode == "preset"


def test_more_points_are_fitted_in_relative_step_time():
    truth = ComputeModel("t", 0.02, 250.0)
    points = [(b, truth.images_per_s(b) * f) for b, f in ((8, 1.02), (16, 0.98), (32, 1.01), (64, 0.99))]
    model = fit_compute(points, "noisy")
    assert model.t0_s == pytest.approx(0.02, rel=0.1) and model.x_max_images_per_s == pytest.approx(250, rel=0.05)
    errors = [model.images_per_s(b) / r - 1 for b, r in points]
    assert max(map(abs, errors)) < 0.03


def test_a_rate_that_falls_with_the_batch_clamps_t0_to_zero():
    model = fit_compute([(32, 100.0), (64, 95.0)], "cpu")
    assert model.t0_clamped and model.t0_s == 0.0
    assert 95.0 < model.x_max_images_per_s < 100.0
    assert "t0 < 0" in model.describe()


@pytest.mark.parametrize(
    "points, match",
    [
        ([(32, 100.0)], "two or more different per-GPU batches"),
        ([(32, 100.0), (32, 110.0)], "two or more different per-GPU batches"),
        ([(32, 100.0), (64, 0.0)], "images/s 0.0 at per-GPU batch 64 is invalid"),
        ([(32, -5.0), (64, 10.0)], "images/s -5.0"),
        ([(0, 5.0), (64, 10.0)], "per-GPU batch 0"),
        ([(32, 100.0), (64, float("nan"))], "images/s nan"),
        ([(32, 100.0), (64, 400.0)], "does not grow with the per-GPU batch"),
    ],
)
def test_bad_measurements_are_refused(points, match):
    with pytest.raises(ValueError, match=match):
        fit_compute(points, "bad")


def test_step_model_adds_the_fixed_cost_to_every_step():
    net = get_preset("h100_ndr").network
    base = Workload(compute_s_per_image=1 / 8000, per_gpu_batch=16)
    fixed = Workload(compute_s_per_image=1 / 8000, per_gpu_batch=16, compute_fixed_s_per_step=0.004)
    one, two = simulate_step(net, base, 1), simulate_step(net, fixed, 1)
    assert two.compute_s == pytest.approx(one.compute_s + 0.004)
    assert two.images_per_s == pytest.approx(16 / (0.004 + 16 / 8000))
    with pytest.raises(ValueError, match="compute_fixed_s_per_step"):
        Workload(compute_s_per_image=1, compute_fixed_s_per_step=-1)


def _run_dir(path, images_per_s, world_size, global_batch_size):
    path.mkdir()
    summary = {"images_per_s": images_per_s, "world_size": world_size, "global_batch_size": global_batch_size}
    (path / "summary.json").write_text(json.dumps(summary))
    return str(path)


def test_measured_points_from_run_directories_and_pairs(tmp_path):
    a = _run_dir(tmp_path / "a", 400.0, 1, 32)
    b = _run_dir(tmp_path / "b", 1000.0, 2, 256)  # two workers: 128 per worker, 500 img/s each
    points = measured_points([a, b, "16:90,8:60"])
    assert [(p.per_gpu_batch, p.images_per_s) for p in points] == [(32, 400), (128, 500), (16, 90), (8, 60)]
    assert points[0].source.endswith("(summary.json)")
    with pytest.raises(ValueError, match="no summary.json"):
        measured_points([str(tmp_path)])
    with pytest.raises(ValueError, match="no images/s recorded"):
        measured_points([_run_dir(tmp_path / "c", None, 1, 32)])
    with pytest.raises(ValueError, match="is not BATCH:IMAGES_PER_S"):
        measured_points(["32:fast"])
    with pytest.raises(ValueError, match="neither a run directory"):
        measured_points([str(tmp_path / "missing")])


def test_simulate_in_calibrated_mode_uses_the_measurements(tmp_path, capsys):
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--gpus",
            "16",
            "--preset",
            "h100_ndr",
            "--algorithm",
            "ring",
            "--per-gpu-batch",
            "32",
            "--measured",
            "16:2000,64:4000",
        ]
    )
    assert cli.run(args) == 0
    out = capsys.readouterr().out
    model = fit_compute([(16, 2000), (64, 4000)], "m")
    assert "calibrated mode" in out and f"{model.images_per_s(32):.0f} img/s/GPU alone" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--measured", "32:100"], "--measured: 1 measurement(s) at 1 per-GPU batch(es)"),
        (["--measured", "32:100,64:-1"], "--measured: images/s -1.0 at per-GPU batch 64 is invalid"),
        (["--alpha-beta", "5e-5"], "--alpha-beta 5e-5: accepted: ALPHA_S:BETA_S_PER_BYTE"),
        (["--alpha-beta", "5e-5:2e-10", "--algorithm", "auto"], "--algorithm 'auto' does not apply to --alpha-beta"),
        (["--gradient-mb", "0"], "--gradient-mb 0.0 is invalid"),
    ],
)
def test_simulate_refuses_bad_calibration_input_in_one_line(extra, message, capsys):
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--gpus", "8", *extra])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err


def test_an_alpha_beta_link_costs_what_the_fit_models():
    net = cli.link_network("5e-5:1e-9", 2)
    work = Workload(compute_s_per_image=1e-3, per_gpu_batch=32, gradient_bytes=4e6, bucket_cap_mb=0, overlap=False)
    step = simulate_step(net, work, 2, "ring")
    # ring on 2 ranks: 2 steps of alpha, 2 (N-1)/N x bytes x beta
    assert step.communication_s == pytest.approx(2 * 5e-5 + 4e6 * 1e-9)
    assert step.step_s == pytest.approx(0.032 + 2 * 5e-5 + 4e6 * 1e-9)


def test_unfitted_compute_checks_hold_within_15_percent():
    # each check is a published point of the same GPU and stack that its t(b) was not fitted on
    for check in COMPUTE_CHECKS:
        assert check.point not in check.model.points
        assert abs(check.error) < 0.15, check.name
    assert Throughput(32, 100.0).step_s == pytest.approx(0.32)


def test_advise_cost_model_in_preset_and_calibrated_mode():
    from largebatch.api import load_config
    from largebatch.study.advise import cluster_estimate, model_flops_ratio, model_layers_ratio

    cfg = load_config("goyal2017_fashion_mnist", [])
    preset = get_preset("h100_ndr")
    est = cluster_estimate(cfg, 1024.0, 6.0, 55_000, "h100_ndr", interval=(512.0, 2048.0))
    # 1,024 images at 32 per GPU: 32 GPUs; the interval's ends 16 and 64
    assert (est["gpus_low"], est["gpus"], est["gpus_high"]) == (16, 32, 64) and est["mode"] == "preset"
    assert est["train_s_low"] < est["train_s"] < est["train_s_high"]
    assert len(est["compute_models"]) == 1 + len(preset.compute_spread) == 2
    # preset mode carries the H100 fit to this model: per-image cost x FLOPs ratio, fixed cost x layers ratio
    flops, layers = model_flops_ratio(cfg), model_layers_ratio(cfg)
    assert 0 < flops < 0.01 and 0 < layers < 0.5
    carried = preset.compute.for_model(flops, layers)
    assert carried.t0_s == pytest.approx(preset.compute.t0_s * layers)
    assert carried.x_max_images_per_s == pytest.approx(preset.compute.x_max_images_per_s / flops)
    assert est["compute"] == carried.describe()
    # calibrated mode: the user's own points, unscaled; on one GPU the rate is the fit's at 32 per GPU
    points = (Throughput(16, 2000.0), Throughput(64, 4000.0))
    one = cluster_estimate(cfg, 32.0, 6.0, 55_000, "h100_ndr", measured_throughput=points)
    assert one["mode"] == "calibrated" and one["gpus"] == 1
    assert one["images_per_s"] == pytest.approx(fit_compute(points, "m").images_per_s(32))
    assert one["train_s"] == pytest.approx(6.0 * 55_000 / one["images_per_s"])
    with pytest.raises(ValueError, match="two or more different per-GPU batches"):
        cluster_estimate(cfg, 32.0, 6.0, 55_000, "h100_ndr", measured_throughput=points[:1])


def test_simulate_refuses_a_run_directory_without_images_per_s(tmp_path, capsys):
    parser = cli.argparse.ArgumentParser()
    cli.add_arguments(parser)
    empty = tmp_path / "no_rate"
    empty.mkdir()
    (empty / "summary.json").write_text(json.dumps({"world_size": 1, "global_batch_size": 32}))
    assert cli.run(parser.parse_args(["--gpus", "8", "--measured", str(empty), "64:500,128:600"])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--measured: " in err and "no images/s recorded" in err
