"""End to end: the CLI on real Fashion-MNIST (a subset), 2 workers, every output, resume, torchrun, errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clirun

pytestmark = pytest.mark.e2e

SMALL = [
    "--set",
    "data.train_subset=4096",
    "--set",
    "data.test_subset=2000",
    "--set",
    "train.epochs=2",
    "--set",
    "train.eval_every_epochs=1",
    "--set",
    "train.log_every_steps=2",
    "--set",
    "train.target_top1=20",
    "--set",
    "schedule.warmup_epochs=0.5",
    "--set",
    "schedule.name=step",
    "--set",
    "schedule.decay_epochs=[1.5]",
    "--set",
    "optim.base_lr=0.1",
]


def largebatch(*args, cwd, timeout=300, module=("-m", "largebatch")):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return clirun.subprocess_run(
        [sys.executable, *module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def final_model(run_dir: Path) -> dict:
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt_step*.pt"))
    from largebatch.train.checkpoint import load_checkpoint

    return load_checkpoint(ckpts[-1])["model"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("work")
    out = cwd / "run"
    proc = largebatch("train", "--nproc", "2", *SMALL, "--out", str(out), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, out, proc


def test_every_output_file(run):
    _, out, _ = run
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"] == "goyal2017_fashion_mnist" and config["train"]["epochs"] == 2
    env = json.loads((out / "env.json").read_text())
    assert env["world_size"] == 2 and env["backend"] == "gloo" and env["torch"].startswith("2.14.1")
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and len(train) == 8  # 4096 // 512 = 8 steps/epoch, logged every 2 steps
    for r in records:
        assert {"step", "epoch", "lr", "loss", "top1", "images_per_s", "wall_s"} <= r.keys()
    assert all(r["images_per_s"] > 0 and r["loss"] > 0 for r in train)
    # base LR 0.1 per 256 -> peak 0.2 at 512; the first record is step index 1 of a 4-step warmup from 0.4
    assert train[0]["lr"] == pytest.approx(0.1 + (0.2 - 0.1) * 1 / 4)
    assert train[-1]["lr"] == pytest.approx(0.02)  # after the decay at epoch 1.5
    assert [r["step"] for r in evals] == [8, 16]
    assert list(out.glob("events.out.tfevents.*"))
    assert (out / "curves.png").stat().st_size > 10_000
    assert len(list((out / "checkpoints").glob("ckpt_step*.pt"))) == 2
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "top1",
        "best_top1",
        "epochs",
        "global_batch_size",
        "world_size",
        "images_per_s",
        "wall_s",
        "target_top1",
        "time_to_target_s",
    ):
        assert key in summary
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 512 and summary["epochs"] == 2
    assert summary["top1"] == evals[-1]["top1"] and summary["best_top1"] == max(r["top1"] for r in evals)
    assert summary["top1"] > 25  # 16 steps on 4096 real images: measured 37.4%, chance is 10%
    # train.precision=auto: torch's CPU query decides, and says so in both records
    from largebatch.train.precision import cpu_bf16_support

    native, reason = cpu_bf16_support()
    for record in (env, summary):
        assert record["precision_requested"] == "auto" and record["precision_reason"] == reason
        assert record["precision"] == ("bf16" if native else "fp32")
    assert summary["startup_s"]["data_load_s"] > 0 and summary["eval_s"] > 0
    assert summary["time_to_target_s"] is not None and 0 < summary["time_to_target_s"] <= summary["wall_s"]


def test_model_card_gives_plain_torch_the_training_accuracy(run):
    """model_final.json says how inputs are normalized: plain torch, fed raw Fashion-MNIST pixels by it,
    scores what the training's last evaluation scored (unnormalized pixels would score near chance)."""
    from largebatch.data.fashion_mnist import load_fashion_mnist
    from largebatch.nn import build_model

    _, out, _ = run
    card = json.loads((out / "model_final.json").read_text())
    assert card["classes"][0] == "T-shirt/top" and card["num_classes"] == 10 and card["input"]["size_px"] == [28, 28]
    arch = card["architecture"]
    model = build_model(
        arch["name"],
        num_classes=10,
        in_channels=card["input"]["channels"],
        width=arch["width"],
        blocks_per_stage=arch["blocks_per_stage"],
        stem_stride=arch["stem_stride"],
    )
    model.load_state_dict(torch.load(out / "model_final.pt", weights_only=True))
    _, _, test_x, test_y = load_fashion_mnist("")
    test_x, test_y = test_x[:2000], test_y[:2000]
    norm = card["input"]["normalization"]
    mean, std = (torch.tensor(norm[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    assert card["input"]["test_time_flip"] is True  # the default recipe's
    with torch.no_grad():
        x = (test_x.float() / 255 - mean) / std
        logits = (model.eval()(x) + model(x.flip(3))) / 2
        top1 = (logits.argmax(1) == test_y).float().mean().item() * 100
    summary = json.loads((out / "summary.json").read_text())
    assert top1 == pytest.approx(summary["top1"], abs=0.1)


def test_eval_command_matches_training_eval(run):
    cwd, out, _ = run
    ckpt = sorted((out / "checkpoints").glob("ckpt_step*.pt"))[-1]
    proc = largebatch("eval", "--checkpoint", str(ckpt), cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert result["count"] == 2000 and result["top1"] == pytest.approx(summary["top1"], abs=1e-9)
    assert "top5" not in result  # 10 classes: top-1 only


def test_python_evaluate_is_the_eval_command(run):
    """``largebatch.evaluate`` (docs/api.md) returns what ``largebatch eval`` prints, for a run directory
    (its model_final.pt) and for a checkpoint; bad input is a ConfigError. A fresh interpreter: the call
    sets torch's threads, which a test process that forks must not hold."""
    cwd, out, _ = run
    ckpt = sorted((out / "checkpoints").glob("ckpt_step*.pt"))[-1]
    code = (
        "import json, sys, largebatch\n"
        "from largebatch.config import ConfigError\n"
        "results = [largebatch.evaluate(p, ['data.test_subset=500']) for p in sys.argv[1:3]]\n"
        "try:\n"
        "    largebatch.evaluate(sys.argv[1], ['nope.key=1'])\n"
        "except ConfigError as err:\n"
        "    results.append(str(err))\n"
        "print(json.dumps(results))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out), str(ckpt)], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final, at_ckpt, error = json.loads(proc.stdout.splitlines()[-1])
    command = largebatch("eval", str(out), "--set", "data.test_subset=500", cwd=cwd)
    assert command.returncode == 0, command.stderr[-3000:]
    assert final == json.loads(command.stdout) and final["checkpoint"] == str(out / "model_final.pt")
    assert final["count"] == at_ckpt["count"] == 500 and final["step"] is None
    assert at_ckpt["checkpoint"] == str(ckpt) and at_ckpt["step"] == int(ckpt.stem.removeprefix("ckpt_step"))
    assert "nope" in error


def test_resume_is_bitwise_equal(run):
    cwd, out, _ = run
    resumed = cwd / "resumed"
    shutil.copytree(out, resumed)
    ckpts = sorted((resumed / "checkpoints").glob("ckpt_step*.pt"))
    ckpts[-1].unlink()  # as if the run had stopped after epoch 1
    proc = largebatch("train", "--nproc", "2", *SMALL, "--out", str(resumed), "--resume", "auto", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    env = json.loads((resumed / "env.json").read_text())
    assert env["world_size"] == 2 and len(env["resumes"]) == 1  # the first segment's record is kept
    a, b = final_model(out), final_model(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the gradient-noise-scale averages travel in the checkpoint: after the resume they go on as if
    # the run had never stopped (restarted averages would give other values for about 100 steps)
    resume_step = json.loads(proc.stderr.split("resumed from")[1].split("at step")[1].split()[0].strip("(,"))
    logged = {}
    for path in (out, resumed):
        records = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        logged[path] = {r["step"]: r["noise_scale"] for r in records if r["kind"] == "train" and "noise_scale" in r}
    after = sorted(step for step in logged[resumed] if step > resume_step)
    assert after, logged[resumed]
    for step in after:
        assert logged[resumed][step] == pytest.approx(logged[out][step], rel=1e-4), step


def test_torchrun_gives_the_same_run(run):
    cwd, out, _ = run
    out2 = cwd / "torchrun"
    proc = largebatch(
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "largebatch",
        "train",
        *SMALL,
        "--out",
        str(out2),
        cwd=cwd,
        module=("-m", "torch.distributed.run"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out2 / "summary.json").read_text())["world_size"] == 2
    a, b = final_model(out), final_model(out2)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_existing_run_is_not_overwritten(run):
    cwd, out, _ = run
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    proc = largebatch("train", *SMALL, "--out", str(out), cwd=cwd)
    assert proc.returncode == 2 and "--resume auto" in proc.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_bad_value_exits_2_before_workers(tmp_path):
    proc = largebatch("train", "--set", "optim.base_lr=abc", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    assert "optim.base_lr" in proc.stderr and "'abc'" in proc.stderr and "float" in proc.stderr
    assert not (tmp_path / "runs").exists()
    proc = largebatch("train", "--nproc", "3", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "does not split evenly over 3 workers" in proc.stderr
    proc = largebatch("train", "--set", f"data.root={tmp_path}", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "dataset-fashion-mnist" in proc.stderr


def test_garbage_idx_files_are_refused_before_any_worker(tmp_path):
    """Files that exist but are not IDX data are found by the pre-launch check (they used to pass it
    and fail in every worker): exit 2, one line naming the file."""
    root = tmp_path / "fm"
    root.mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (root / name).write_bytes(b"\x00\x00\x08\x03garbage")
    env_cache = dict(os.environ, LARGEBATCH_CACHE=str(tmp_path / "cache"))
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            "--nproc",
            "2",
            "--set",
            f"data.root={root}",
            "--out",
            str(tmp_path / "run"),
        ],
        cwd=tmp_path,
        env=env_cache,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (
        len(proc.stderr.strip().splitlines()) == 1
        and "train-images-idx3-ubyte: 11 bytes, shorter than an IDX header" in proc.stderr
    )
    assert not (tmp_path / "run").exists()


def test_recipes_command(tmp_path):
    proc = largebatch("recipes", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0
    assert "goyal2017_fashion_mnist" in proc.stdout and "goyal2017_resnet50_imagenet_8k" in proc.stdout
    assert "Goyal et al. 2017" in proc.stdout
    proc = largebatch("recipes", "goyal2017_resnet50_imagenet_8k", cwd=tmp_path, timeout=60)
    assert proc.returncode == 0
    assert "global_batch_size: 8192" in proc.stdout and "bn:\n    batch_size: 32" in proc.stdout
    assert "decay_epochs" in proc.stdout
    proc = largebatch("recipes", "nope", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "known recipes" in proc.stderr
    # a reader that went away (`| head -1`) ends the command quietly: here the pipe's read end is
    # closed before the command writes, so every write fails
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        piped = subprocess.run(  # a real pipe: BrokenPipe handling
            [sys.executable, "-m", "largebatch", "recipes", "goyal2017_resnet50_imagenet_8k"],
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, piped.stderr


def test_imagefolder_run(tmp_path):
    """A generated ImageNet-layout folder (JPEGs of several sizes) trains and evaluates through torchvision."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    classes = ["n01440764", "n01443537", "n01484850"]
    for split, per_class in (("train", 24), ("val", 6)):
        for c, wnid in enumerate(classes):
            d = tmp_path / "imagenet" / split / wnid
            d.mkdir(parents=True)
            for i in range(per_class):
                h, w = 40 + 7 * (i % 3), 48 + 5 * (i % 4)
                base = torch.zeros(h, w, 3, dtype=torch.uint8)
                base[..., c] = 200  # the class is the dominant colour
                noise = torch.randint(0, 50, (h, w, 3), generator=g, dtype=torch.uint8)
                Image.fromarray((base + noise).numpy()).save(d / f"{wnid}_{i}.JPEG", quality=90)
    out = tmp_path / "run"
    proc = largebatch(
        "train",
        "--nproc",
        "2",
        "--set",
        "data.name=imagefolder",
        "--set",
        f"data.root={tmp_path / 'imagenet'}",
        "--set",
        "model.name=resnet18",
        "--set",
        "data.image_size_px=32",
        "--set",
        "data.imagefolder.loader_workers=0",
        "--set",
        "train.epochs=2",
        "--set",
        "train.eval_every_epochs=1",
        "--set",
        "train.global_batch_size=32",
        "--set",
        "train.bn.batch_size=8",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "schedule.decay_epochs=[]",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2  # 72 images // 32 = 2 steps per epoch
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert len(evals) == 2 and all(0 <= r["top1"] <= 100 for r in evals)
    proc = largebatch(
        "train",
        "--set",
        "data.name=imagefolder",
        "--set",
        f"data.root={tmp_path / 'missing'}",
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 2 and "train/<class>" in proc.stderr


def test_large_batch_recipe_with_lars_from_the_cli(tmp_path):
    """An issue-3 recipe end to end: LARS, poly schedule from 0, label smoothing, accumulation."""
    out = tmp_path / "run"
    proc = largebatch(
        "train",
        "--recipe",
        "mlperf_lars_fashion_mnist",
        "--set",
        "data.train_subset=4096",
        "--set",
        "data.test_subset=1000",
        "--set",
        "train.epochs=1",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_batch_size"] == 2048 and summary["steps"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["optim"]["name"] == "lars" and config["train"]["label_smoothing"] == 0.1
    proc = largebatch("train", "--set", "optim.name=adamw", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "sgd, lars, lamb, rmsprop_warmup" in proc.stderr


SCHEDULE = [
    "--set",
    "train.global_batch_size=256",
    "--set",
    "train.bn.statistics=precise",
    "--set",
    "train.bn.precise_batches=2",
    "--set",
    "train.batch_schedule=[{start_epoch: 0, global_batch_size: 256}, {start_epoch: 1, global_batch_size: 1024}]",
]


def test_batch_schedule_with_precise_bn_resumes_across_the_boundary(tmp_path):
    """Mikami's growing batch from the CLI: 256 then 1024 (4x) at epoch 1, precise BN before each
    evaluation; a run resumed from the checkpoint at the boundary ends with the same weights."""
    out = tmp_path / "run"
    proc = largebatch("train", "--nproc", "2", *SMALL, *SCHEDULE, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch stage 1 from epoch 1: global batch 1024" in proc.stderr
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    stages = [r for r in records if r["kind"] == "stage"]
    assert [(r["stage"], r["global_batch_size"], r["step"]) for r in stages] == [(1, 1024, 16)]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 16 + 4 and [s["global_batch_size"] for s in summary["batch_stages"]] == [256, 1024]
    assert summary["global_batch_size"] == 1024  # named by its final stage, as Mikami et al. name 34k->68k "68k"
    assert summary["top1"] > 25

    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    sorted((resumed / "checkpoints").glob("ckpt_step*.pt"))[-1].unlink()  # stopped at the boundary
    proc = largebatch(
        "train", "--nproc", "2", *SMALL, *SCHEDULE, "--out", str(resumed), "--resume", "auto", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "step 16 (epoch 1)" in proc.stderr
    a, b = final_model(out), final_model(resumed)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_last_batch_bn_synchronized_over_both_workers(tmp_path):
    """Akiba's BN without moving averages (pooled variance) with BN groups spanning the 2 processes."""
    out = tmp_path / "run"
    proc = largebatch(
        "train",
        "--nproc",
        "2",
        *SMALL,
        "--set",
        "train.epochs=1",
        "--set",
        "train.bn.statistics=last_batch",
        "--set",
        "train.bn.variance_averaging=pooled",
        "--set",
        "train.bn.sync_ranks=2",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "each BN group spans 2 processes: BN batch 32" in proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bn_statistics"] == "last_batch" and summary["top1"] > 20
    proc = largebatch("train", "--nproc", "2", *SMALL, "--set", "train.bn.sync_ranks=3", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "train.bn.sync_ranks=3 does not divide the 2 processes" in proc.stderr


COMM_SMALL = [
    *SMALL,
    "--set",
    "train.epochs=1",
    "--set",
    "data.train_subset=2048",
    "--set",
    "train.global_batch_size=256",
    "--set",
    "train.bn.batch_size=32",
    "--set",
    "comm.bucket_cap_mb=0.05",
]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_loopback_run_with_topology_hooks(tmp_path):
    """Two torchrun agents (--nnodes 2, 2 workers each, c10d rendezvous on loopback) train with the
    hierarchical hook; 4 local workers simulating 2 nodes train with the 2D-torus hook (fp16
    compression); both end where DDP's own all-reduce ends, to rounding."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "2",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"127.0.0.1:{port}",
        "--rdzv_id",
        "loopback",
        "-m",
        "largebatch",
        "train",
        *COMM_SMALL,
        "--set",
        "comm.algorithm=hierarchical",
        "--out",
        str(tmp_path / "two_nodes"),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    agents = [
        clirun.popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [a.communicate(timeout=300) for a in agents]
    assert all(a.returncode == 0 for a in agents), "\n".join(o[1][-2000:] for o in outs)
    log = "".join(o[1] for o in outs)
    assert "gradient all-reduce: hierarchical (scatter) over 2 node(s) x 2 worker(s)" in log
    assert "gloo: reduce-scatter is emulated" in log

    torus = largebatch(
        "train",
        "--nproc",
        "4",
        *COMM_SMALL,
        "--set",
        "comm.algorithm=torus2d",
        "--set",
        "comm.workers_per_node=2",
        "--set",
        "comm.compression=fp16",
        "--out",
        str(tmp_path / "torus"),
        cwd=tmp_path,
    )
    assert torus.returncode == 0, torus.stderr[-3000:]
    assert "2D torus 2 x 2" in torus.stderr and "compression fp16" in torus.stderr
    plain = largebatch("train", "--nproc", "4", *COMM_SMALL, "--out", str(tmp_path / "plain"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    ref = final_model(tmp_path / "plain")
    # (8 steps of SGD with momentum and BN amplify the reordered sums; the hooks themselves equal
    # DDP to 1e-6 per step in tests/distributed/test_collectives.py)
    for name, (rtol, atol) in (("two_nodes", (1e-3, 1e-3)), ("torus", (5e-2, 5e-3))):
        got = final_model(tmp_path / name)
        for k, v in ref.items():
            if v.is_floating_point():
                assert torch.allclose(got[k], v, rtol=rtol, atol=atol), (name, k)
    bad = largebatch(
        "train",
        "--nproc",
        "4",
        *COMM_SMALL,
        "--set",
        "comm.algorithm=torus2d",
        "--set",
        "comm.torus_x=3",
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 2 and "accepted shapes X x Y: 1x4, 2x2, 4x1" in bad.stderr


def make_imagenet(root: Path, *, per_class=(16, 4), bad=()):
    """A small ImageNet-layout folder of JPEGs; ``bad`` adds broken files to train/ (name, bytes)."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    classes = ["n01440764", "n01443537"]
    for split, count in zip(("train", "val"), per_class):
        for c, wnid in enumerate(classes):
            d = root / split / wnid
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = torch.zeros(36, 40, 3, dtype=torch.uint8)
                base[..., c] = 200
                noise = torch.randint(0, 50, (36, 40, 3), generator=g, dtype=torch.uint8)
                Image.fromarray((base + noise).numpy()).save(d / f"{wnid}_{i}.JPEG", quality=90)
    for name, data in bad:
        (root / "train" / classes[0] / name).write_bytes(data)


def test_bad_image_files_fail_or_are_skipped_and_reported(tmp_path):
    make_imagenet(tmp_path / "imagenet")
    jpeg = next((tmp_path / "imagenet" / "train").rglob("*.JPEG")).read_bytes()
    bad = [("zero.JPEG", b""), ("truncated.JPEG", jpeg[: len(jpeg) // 3]), ("notes.JPEG", b"not an image at all")]
    make_imagenet(tmp_path / "imagenet", bad=bad)
    common = [
        "--nproc",
        "2",
        "--set",
        "data.name=imagefolder",
        "--set",
        f"data.root={tmp_path / 'imagenet'}",
        "--set",
        "model.name=resnet18",
        "--set",
        "data.image_size_px=32",
        "--set",
        "data.imagefolder.loader_workers=0",
        "--set",
        "train.epochs=1",
        "--set",
        "train.global_batch_size=16",
        "--set",
        "train.bn.batch_size=8",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "schedule.decay_epochs=[]",
    ]
    proc = largebatch("train", *common, "--out", str(tmp_path / "fail"), cwd=tmp_path)
    assert (
        proc.returncode == 1
        and "cannot decode" in proc.stderr
        and "data.imagefolder.bad_file_policy=skip" in proc.stderr
    )
    out = tmp_path / "skip"
    proc = largebatch(
        "train", *common, "--set", "data.imagefolder.bad_file_policy=skip", "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    listed = (out / "bad_files.txt").read_text()
    assert all(name in listed for name, _ in bad) and "unreadable image file(s) were skipped" in proc.stderr
    assert json.loads((out / "summary.json").read_text())["bad_files"] == 3


@pytest.mark.parametrize(
    "layout,fragment",
    [
        ("missing", "is not a directory"),
        ("flat", "holds images directly"),
        ("empty", "hold no image files"),
    ],
)
def test_bad_data_directories_exit_2_before_workers(tmp_path, layout, fragment):
    root = tmp_path / "data"
    if layout == "flat":
        make_imagenet(root)
        for wnid_dir in list((root / "train").iterdir()):
            for f in wnid_dir.iterdir():
                f.rename(root / "train" / f.name)
            wnid_dir.rmdir()
    elif layout == "empty":
        for split in ("train", "val"):
            (root / split / "n01440764").mkdir(parents=True)
    proc = largebatch("train", "--set", "data.name=imagefolder", "--set", f"data.root={root}", cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
    assert "rank" not in proc.stderr  # no worker started


def test_checkpoint_from_another_config_is_refused(run):
    cwd, out, _ = run
    other = cwd / "other"
    shutil.copytree(out, other)
    proc = largebatch(
        "train", "--nproc", "2", *SMALL, "--set", "optim.base_lr=0.3", "--out", str(other), "--resume", "auto", cwd=cwd
    )
    assert (
        proc.returncode == 2
        and "was written with another config (optim.base_lr: checkpoint 0.1, now 0.3)" in proc.stderr
    )
    assert "rank" not in proc.stderr  # refused before any worker started


def test_flat_val_with_labels_file_and_both_decoders(tmp_path):
    """ImageNet's other validation layout (val/*.JPEG + LOC_val_solution.csv) with the PIL baseline
    decoder; and the fast decoder's batches equal the PIL pipeline's classes and shapes."""
    root = tmp_path / "imagenet"
    make_imagenet(root)
    rows = ["ImageId,PredictionString"]
    for wnid_dir in sorted((root / "val").iterdir()):
        for f in sorted(wnid_dir.iterdir()):
            f.rename(root / "val" / f.name)
            rows.append(f"{f.stem},{wnid_dir.name} 1 2 3 4")
        wnid_dir.rmdir()
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    common = [
        "--set",
        "data.name=imagefolder",
        "--set",
        f"data.root={root}",
        "--set",
        "model.name=resnet18",
        "--set",
        "data.image_size_px=32",
        "--set",
        "data.imagefolder.loader_workers=0",
        "--set",
        "train.epochs=1",
        "--set",
        "train.global_batch_size=16",
        "--set",
        "train.bn.batch_size=8",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "schedule.decay_epochs=[]",
        "--set",
        f"data.imagefolder.val_labels={tmp_path / 'LOC_val_solution.csv'}",
    ]
    out = tmp_path / "run"
    proc = largebatch(
        "train", "--nproc", "1", *common, "--set", "data.imagefolder.decoder=pil", "--out", str(out), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert len(evals) == 1 and evals[0]["top1"] >= 0

    import torch as _torch

    from largebatch.data.imagefolder import ImageFolderData

    datas = [
        ImageFolderData(
            str(root),
            image_size_px=32,
            augment=False,
            loader_workers=0,
            train_subset=0,
            test_subset=0,
            device=_torch.device("cpu"),
            decoder=d,
            val_labels=str(tmp_path / "LOC_val_solution.csv"),
        )
        for d in ("pil", "torchvision")
    ]
    (xa, ya), (xb, yb) = (next(d.eval_batches(world_size=1, rank=0, batch_size=8)) for d in datas)
    assert _torch.equal(ya, yb) and xa.shape == xb.shape == (8, 3, 32, 32) and xb.dtype == _torch.float32
    assert (xa - xb).abs().mean() < 0.1  # same images, same eval transform; resampling filters differ slightly
    bad = largebatch(
        "train", *common[:-2], "--set", f"data.imagefolder.val_labels={tmp_path / 'none.csv'}", cwd=tmp_path, timeout=60
    )
    assert bad.returncode == 2 and "data.imagefolder.val_labels" in bad.stderr


def test_forced_bf16_and_a_validation_split_from_the_cli(tmp_path):
    """LARGEBATCH_CPU_BF16=1 makes auto pick bf16 on any CPU; data.val_size evaluates a held-out split."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1", LARGEBATCH_CPU_BF16="1")
    proc = clirun.subprocess_run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            "--set",
            "data.train_subset=1536",
            "--set",
            "data.val_size=512",
            "--set",
            "data.test_subset=500",
            "--set",
            "train.epochs=1",
            "--set",
            "schedule.decay_epochs=[0.5]",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["precision_reason"] == "LARGEBATCH_CPU_BF16=1"
    assert summary["steps"] == 2 and summary["val_size"] == 512  # 1024 training images left: 2 steps of 512
    evals = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    assert evals[-1]["val_top1"] == summary["val_top1"] and 0 <= summary["val_top1"] <= 100
    assert "precision bf16 (train.precision=auto): LARGEBATCH_CPU_BF16=1" in proc.stderr


OPTIMIZERS = ["sgd", "lars", "lamb", "rmsprop_warmup"]


@pytest.fixture(scope="module")
def optimizer_switch_runs(tmp_path_factory):
    """The default recipe with each optimizer name, 2 epochs on the whole training set, the recipe's
    schedule scaled to 2 epochs (as `largebatch sweep` scales it), precision auto (bf16 where the CPU
    has it). The four runs go side by side, one process and one thread each (the global batch and its
    BN groups are the recipe's on any number of processes): the 2 cores stay busy through each run's
    start, evaluations and checkpoints."""
    root = tmp_path_factory.mktemp("optimizers")
    env = {k: v for k, v in os.environ.items() if k != "LARGEBATCH_CPU_BF16"}
    procs = {}
    for name in OPTIMIZERS:
        sets = [
            f"optim.name={name}",
            "train.epochs=2",
            "data.test_subset=2000",
            "train.noise_scale=false",
            "schedule.warmup_epochs=0.111",
            "schedule.decay_epochs=[1.0,1.556,1.889]",
            "train.threads_per_worker=1",
        ]
        args = ["train", "--nproc", "1", "--out", str(root / name)]
        for item in sets:
            args += ["--set", item]
        procs[name] = clirun.start(*args, cwd=root, env=dict(env, PYTHONUNBUFFERED="1"))
    results = {}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=900)
        results[name] = (proc.returncode, err, root / name)
    return results


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_switching_the_optimizer_takes_its_reference_lr_and_trains(optimizer_switch_runs, name):
    """``--set optim.name=NAME`` on the default recipe takes NAME's reference LR (REFERENCE_LRS) and
    reaches 80% test top-1 in 2 epochs on the whole training set."""
    from largebatch.config import REFERENCE_LRS

    returncode, err, out = optimizer_switch_runs[name]
    assert returncode == 0, err[-3000:]
    config = json.loads((out / "config.json").read_text())
    ref = REFERENCE_LRS[name]
    assert (config["optim"]["base_lr"], config["optim"]["base_batch_size"], config["optim"]["lr_scaling"]) == (
        ref.base_lr,
        ref.base_batch_size,
        ref.lr_scaling,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["global_batch_size"] == 512 and summary["steps"] == 2 * 117
    assert summary["top1"] >= 80.0, (name, summary["top1"])
