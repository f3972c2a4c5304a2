"""largebatch.sim: closed forms of Mikami et al. 2018, hand-computed times, the overlap model,
calibration, presets and the ``simulate`` CLI. Pure Python, no torch."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest

from largebatch.sim import (
    PRESETS,
    Network,
    Workload,
    allreduce_cost,
    cli,
    fit_alpha_beta,
    get_preset,
    halving_doubling,
    hierarchical,
    ring,
    simulate_step,
    torus2d,
)

D = 1e8  # bytes per GPU


def net(gpus_per_node=8, nics=1, nic_gbyte_s=6.25, intra_gbyte_s=20.0, alpha_intra=1e-6, alpha_inter=10e-6):
    return Network(
        gpus_per_node=gpus_per_node,
        intra_node_latency_s=alpha_intra,
        intra_node_bandwidth_bytes_per_s=intra_gbyte_s * 1e9,
        inter_node_latency_s=alpha_inter,
        nic_bandwidth_bytes_per_s=nic_gbyte_s * 1e9,
        nics_per_node=nics,
    )


# --- Mikami et al. 2018: steps and bytes per GPU -----------------------------------------------


@pytest.mark.parametrize("n", [2, 8, 64, 256, 4096])
def test_ring_and_halving_doubling_closed_forms(n):
    r, h = ring(net(), n, D), halving_doubling(net(), n, D)
    assert r.steps == 2 * (n - 1)
    assert h.steps == 2 * int(math.log2(n))
    for cost in (r, h):
        assert cost.bytes_per_gpu == pytest.approx(2 * (n - 1) / n * D)


@pytest.mark.parametrize("x,y", [(8, 32), (4, 544), (64, 64), (16, 4)])
def test_torus_closed_form(x, y):
    t = torus2d(net(gpus_per_node=x), x * y, D)
    assert t.steps == 2 * (x - 1) + 2 * (y - 1)
    assert t.intra_node_bytes_per_gpu == pytest.approx(2 * (x - 1) / x * D)  # rows
    assert t.inter_node_bytes_per_gpu == pytest.approx(2 * (y - 1) / (x * y) * D)  # columns, D/X shards
    assert t.bytes_per_gpu == pytest.approx(2 * (x * y - 1) / (x * y) * D)  # bandwidth-optimal


def test_4096_gpus_ring_8190_steps_versus_torus_252():
    n64 = net(gpus_per_node=64)
    assert ring(n64, 4096, D).steps == 8190
    assert torus2d(n64, 4096, D).steps == 252
    assert torus2d(net(gpus_per_node=8), 4096, D, x=64).steps == 252


@pytest.mark.parametrize("g,y", [(8, 32), (4, 544)])
def test_hierarchical_reduce_to_master(g, y):
    h = hierarchical(net(gpus_per_node=g), g * y, D, mode="reduce", inter="ring")
    assert h.steps == 2 * (g - 1) + 2 * (y - 1)
    assert h.inter_node_bytes_per_gpu * g == pytest.approx(2 * (y - 1) / y * D)  # what a master sends
    assert h.intra_node_bytes_per_gpu == pytest.approx(2 * (g - 1) / g * D)  # chain reduce + broadcast
    # scatter mode is the 2D torus with X = G
    s, t = hierarchical(net(gpus_per_node=g), g * y, D), torus2d(net(gpus_per_node=g), g * y, D)
    assert (s.steps, s.time_s) == (t.steps, pytest.approx(t.time_s))


@pytest.mark.parametrize("n", [3, 12, 24, 2176])
def test_halving_doubling_non_power_of_two_binary_blocks(n):
    p = 1 << (n.bit_length() - 1)
    h = halving_doubling(net(), n, D)
    assert h.steps == 2 * int(math.log2(p)) + 2  # two extra steps (Goyal sec. 4)
    # the P GPUs of the power-of-two core send 2(P-1)/P D; the N-P extra ones D in, their partners D back
    assert h.bytes_per_gpu == pytest.approx((p * 2 * (p - 1) / p * D + 2 * (n - p) * D) / n)


# --- time formula -------------------------------------------------------------------------------


def test_ring_time_hand_computed():
    # 16 GPUs on 2 nodes: all 30 steps at the inter-node alpha and the 6.25 GB/s NIC (slower than NVLink).
    assert ring(net(), 16, D).time_s == pytest.approx(30 * 10e-6 + 2 * 15 / 16 * D / 6.25e9)
    # one node: intra-node alpha and bandwidth
    assert ring(net(), 8, D).time_s == pytest.approx(14 * 1e-6 + 2 * 7 / 8 * D / 20e9)


def test_shared_nic_divides_bandwidth():
    n = net()  # 8 GPUs and one 6.25 GB/s NIC per node
    rows = 2 * (7 * 1e-6 + 7 / 8 * D / 20e9)
    # torus 8 x 2: the 8 column rings (D/8 each) share the NIC -> 6.25/8 GB/s each
    assert torus2d(n, 16, D).time_s == pytest.approx(rows + 2 * 10e-6 + (D / 8) / (6.25e9 / 8))
    # reduce to a master: one sender per node gets the whole NIC for the whole vector
    chains = 2 * (7 * 1e-6 + D / 20e9)
    assert hierarchical(n, 16, D, mode="reduce").time_s == pytest.approx(chains + 2 * 10e-6 + D / 6.25e9)
    # two NICs: the flat ring is striped over both; a single master still gets one
    assert ring(net(nics=2), 16, D).time_s == pytest.approx(30 * 10e-6 + 2 * 15 / 16 * D / 12.5e9)
    assert hierarchical(net(nics=2), 16, D, mode="reduce").time_s == pytest.approx(chains + 2 * 10e-6 + D / 6.25e9)


@pytest.mark.parametrize("algorithm", ["ring", "halving_doubling", "hierarchical", "torus2d"])
def test_more_bandwidth_less_time(algorithm):
    times = [allreduce_cost(algorithm, net(nic_gbyte_s=bw), 256, D).time_s for bw in (1, 5, 25, 100)]
    assert times == sorted(times, reverse=True) and times[0] > times[-1]
    intra = [allreduce_cost(algorithm, net(intra_gbyte_s=bw), 256, D).time_s for bw in (5, 20, 80)]
    assert intra == sorted(intra, reverse=True)
    assert allreduce_cost(algorithm, net(), 1, D).time_s == 0.0


def test_invalid_shapes_raise():
    with pytest.raises(ValueError, match="x=3 does not divide gpus=256"):
        torus2d(net(), 256, D, x=3)
    with pytest.raises(ValueError, match="multiple or a divisor"):
        torus2d(net(), 240, D, x=6)
    with pytest.raises(ValueError, match="multiple of gpus_per_node=8"):
        hierarchical(net(), 12, D)
    with pytest.raises(ValueError, match="unknown"):
        allreduce_cost("butterfly", net(), 8, D)
    with pytest.raises(ValueError, match="gpus=0"):
        ring(net(), 0, D)
    with pytest.raises(ValueError, match="nic_bandwidth_bytes_per_s"):
        net(nic_gbyte_s=0)


# --- step model ---------------------------------------------------------------------------------


def test_single_bucket_closed_form():
    n, work = net(), Workload(compute_s_per_image=0.01, per_gpu_batch=32, gradient_bytes=D, bucket_cap_mb=0)
    step = simulate_step(n, work, 64, "ring")
    comm = ring(n, 64, D).time_s
    assert step.step_s == pytest.approx(0.32 + comm)  # the only bucket is ready when backward ends
    assert step.images_per_s == pytest.approx(64 * 32 / (0.32 + comm))
    assert step.scaling_efficiency == pytest.approx(0.32 / (0.32 + comm))
    assert step.epoch_s(1000) == pytest.approx(1000 / step.images_per_s)
    assert step.train_s(90, 1000) == pytest.approx(90 * step.epoch_s(1000))


def test_bucketed_overlap():
    n = net(nic_gbyte_s=100.0)
    base = dict(compute_s_per_image=0.01, per_gpu_batch=32, gradient_bytes=D, overhead_s_per_step=0.005)
    work = Workload(bucket_cap_mb=D / 4 / (1 << 20), first_bucket_mb=0, **base)  # four equal buckets
    assert work.buckets() == pytest.approx([D / 4] * 4)
    one = ring(n, 64, D / 4).time_s
    assert one < 2 / 3 * 0.32 / 4  # each bucket is reduced before the next is ready
    step = simulate_step(n, work, 64, "ring")
    assert step.communication_s == pytest.approx(4 * one)
    assert step.step_s == pytest.approx(0.32 + one + 0.005)  # only the last bucket is exposed
    assert step.last_bucket_exposed_s == pytest.approx(one)
    serial = simulate_step(
        n, Workload(bucket_cap_mb=D / 4 / (1 << 20), first_bucket_mb=0, overlap=False, **base), 64, "ring"
    )
    assert serial.step_s == pytest.approx(0.32 + 4 * one + 0.005)
    assert simulate_step(n, work, 1, "ring").scaling_efficiency == pytest.approx(1.0)


def test_workload_validation():
    with pytest.raises(ValueError, match="per_gpu_batch"):
        Workload(compute_s_per_image=0.01, per_gpu_batch=0)
    mib = 1 << 20
    # DDP: a first bucket of dist._DEFAULT_FIRST_BUCKET_BYTES (1 MiB), then 25 MiB, the rest last
    assert Workload(compute_s_per_image=1, gradient_bytes=60 * mib).buckets() == pytest.approx(
        [mib, 25 * mib, 25 * mib, 9 * mib]
    )
    assert Workload(compute_s_per_image=1, gradient_bytes=60 * mib, first_bucket_mb=0).buckets() == pytest.approx(
        [25 * mib, 25 * mib, 10 * mib]
    )
    with pytest.raises(ValueError, match="first_bucket_mb"):
        Workload(compute_s_per_image=0.01, first_bucket_mb=-1)


# --- calibration --------------------------------------------------------------------------------


def test_calibration_recovers_alpha_beta():
    alpha, beta = 7e-6, 1 / 11e9
    meas = []
    for i, (nbytes, world) in enumerate((b, w) for b in (1e3, 1e5, 1e7, 1e8) for w in (2, 4, 8, 6)):
        algorithm = "ring" if i % 2 else "halving_doubling"
        steps, sent = (
            (2 * (world - 1), 2 * (world - 1) / world * nbytes)
            if algorithm == "ring"
            else (
                2 * int(math.log2(world)) if world != 6 else 6,
                2 * (world - 1) / world * nbytes if world != 6 else 1.5 * nbytes + 2 * nbytes,
            )
        )
        noise = 1 + 0.004 * (-1) ** i  # +-0.4 % measurement noise
        meas.append((nbytes, world, algorithm, (steps * alpha + sent * beta) * noise))
    fit = fit_alpha_beta(meas)
    assert fit.alpha_s == pytest.approx(alpha, rel=0.01)
    assert fit.beta_s_per_byte == pytest.approx(beta, rel=0.01)
    assert fit.bandwidth_bytes_per_s == pytest.approx(11e9, rel=0.01)
    assert len(fit.relative_errors) == len(meas) and fit.max_abs_error < 0.01
    assert fit.median_abs_error <= fit.max_abs_error
    with pytest.raises(ValueError, match="two points"):
        fit_alpha_beta([(1e6, 8, "ring", 1e-3)])
    with pytest.raises(ValueError, match="measurements\\[0\\]"):
        fit_alpha_beta([(1e6, 1, "ring", 1e-3), (1e3, 8, "ring", 1e-5)])


# --- presets and CLI ----------------------------------------------------------------------------


def test_presets_are_sourced():
    for preset in PRESETS.values():
        assert preset.sources.get("compute") and preset.gpu_images_per_s > 0
        assert preset.workload().gradient_bytes == 25_557_032 * preset.gradient_bytes_per_parameter
        work = preset.workload(64)
        assert work.compute_fixed_s_per_step == preset.compute.t0_s
        assert 64 / (work.compute_fixed_s_per_step + 64 * work.compute_s_per_image) == pytest.approx(
            preset.compute.images_per_s(64)
        )
    # TensorFlow's DGX-1 P100 figures (195 at 32, 219 at 64), not the paper's own baseline: the fit is exact there
    p100 = get_preset("goyal2017").compute
    assert (p100.images_per_s(32), p100.images_per_s(64)) == pytest.approx((195.0, 219.0))
    with pytest.raises(ValueError, match="accepted: goyal2017"):
        get_preset("dgx1")


def _args(**changes):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args([f"--{k.replace('_', '-')}={v}" for k, v in changes.items()])


def test_cli_writes_figure(tmp_path, capsys):
    out = tmp_path / "sim.png"
    assert cli.run(_args(gpus=64, preset="mikami2018", out=out)) == 0
    assert out.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert all(name in text for name in ("ring", "halving_doubling", "hierarchical", "torus2d"))


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli.run(_args(preset="nope", out=tmp_path / "a.png")) == 2
    assert "--preset" in capsys.readouterr().err
    assert cli.run(_args(gpus=0, out=tmp_path / "a.png")) == 2
    assert cli.run(_args(gpus=256, torus_x=3, algorithm="torus2d", out=tmp_path / "a.png")) == 2
    assert "--torus-x" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_import_does_not_load_torch():
    code = (
        "import sys, largebatch.sim; "
        "bad = [m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules]; print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_simulate_is_a_subcommand_of_the_main_cli(tmp_path, capsys):
    from largebatch.cli import main

    out = tmp_path / "sim.png"
    assert (
        main(["simulate", "--gpus", "64", "--preset", "mikami2018", "--algorithm", "torus2d", "--out", str(out)]) == 0
    )
    assert "torus2d" in capsys.readouterr().out and out.stat().st_size > 10_000
    assert main(["simulate", "--gpus", "0"]) == 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--epochs", "inf"], "--epochs inf is invalid; accepted: a finite number > 0"),
        (["--epochs", "nan"], "--epochs nan is invalid"),
        (["--images", "0"], "--images 0 is invalid"),
        (["--out", "/no/such/folder/sim.png"], "folder /no/such/folder does not exist"),
    ],
)
def test_simulate_bad_input_is_one_line_with_exit_2(argv, message):
    proc = subprocess.run(
        [sys.executable, "-m", "largebatch", "simulate", "--gpus", "8", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_simulate_refuses_an_out_it_cannot_write(tmp_path):
    (tmp_path / "a_dir.png").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (tmp_path / "a_dir.png", "is a directory"),
        (tmp_path / "a_file" / "sim.png", "is not a folder"),
        # found only when writing (root passes the access check): the OSError becomes the same one line
        ("/proc/sim.png", "--out /proc/sim.png:"),
    ]
    for out, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "largebatch", "simulate", "--gpus", "8", "--out", str(out)],
            capture_output=True,
            text=True,
        )
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (out, proc.stderr)


def test_simulate_writes_no_figure_unless_asked(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "largebatch", "simulate", "--gpus", "16"], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.returncode == 0 and "train_min" in proc.stdout and "# figure" not in proc.stdout
    assert list(tmp_path.iterdir()) == []
