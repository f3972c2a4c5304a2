"""The CUDA paths, in one process: mixed precision with and without loss scaling, the device-side
non-finite guard without a host sync per step (``torch.cuda.set_sync_debug_mode("error")``),
batched nvJPEG decoding against the CPU decoder, and an NCCL process group with every comm hook.

Marked ``cuda``; the CUDA cases skip on a machine without a GPU (they run in
``benchmarks/gpu_check.sh``). The CPU cases of the parametrized tests run everywhere, so the code
the CUDA cases share is exercised by the ordinary suite too.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image

from largebatch.config import apply_overrides
from largebatch.dist.env import DistEnv
from largebatch.plan import resolve
from largebatch.recipes import DEFAULT_RECIPE, get_recipe
from largebatch.train.trainer import Trainer

pytestmark = pytest.mark.cuda
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
OPTIMIZERS = ("sgd", "lars", "lamb", "rmsprop_warmup")

SMALL = [
    "data.name=synthetic",
    "data.synthetic.train_samples=512",
    "data.synthetic.test_samples=128",
    "data.image_size_px=16",
    "train.global_batch_size=128",
    "train.bn.batch_size=32",
    "train.epochs=3",
    "model.width=8",
    "schedule.warmup_epochs=0",
    "train.log_every_steps=1",
    "train.noise_scale=false",
]


def _env(device: str) -> DistEnv:
    return DistEnv(0, 1, 0, 1, torch.device(device, 0) if device == "cuda" else torch.device(device), None)


def _trainer(tmp: str, device: str, extra=()) -> Trainer:
    cfg = apply_overrides(get_recipe(DEFAULT_RECIPE), [*SMALL, f"train.device={device}", *extra])
    return Trainer(cfg, resolve(cfg, 1), _env(device), Path(tmp))


def _device_batch(trainer: Trainer, device: str):
    trainer.sampler.set_epoch(0)
    images, labels = next(iter(trainer.data.train_batches(trainer.sampler, seed=0)))
    return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


@pytest.mark.parametrize(
    "device, precision",
    [
        ("cpu", "bf16"),
        pytest.param("cuda", "bf16", marks=needs_cuda),
        pytest.param("cuda", "fp16", marks=needs_cuda),
    ],
)
def test_mixed_precision_trains(device, precision):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(tmp, device, [f"train.precision={precision}"])
        assert trainer.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        if precision == "fp16":
            assert trainer.scaler is not None and trainer.scaler.is_enabled()  # dynamic loss scaling
        state = trainer.fit()
        records = _train_records(Path(tmp))
    losses = [r["loss"] for r in records]
    assert state.step == 12 and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3])  # it learns


def _train_records(run: Path):
    from largebatch.train.metrics import read_metrics

    return [r for r in read_metrics(run) if r["kind"] == "train"]


@needs_cuda
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_device_guard_needs_no_host_sync(optimizer):
    with tempfile.TemporaryDirectory() as tmp:
        trainer = _trainer(
            tmp, "cuda", [f"optim.name={optimizer}", "train.nonfinite_check=device", "train.nonfinite_policy=skip"]
        )
        assert trainer.guard.on_device
        images, labels = _device_batch(trainer, "cuda")
        trainer._train_step(images, labels)  # first step: lazy state (optimizer buffers, cuDNN plans)
        before = [p.detach().clone() for p in trainer.model.parameters()]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host sync raises
        try:
            for _ in range(3):
                trainer._train_step(images, labels)
            bad = images.clone()
            bad[0] = float("nan")
            trainer._train_step(bad, labels)  # a non-finite step, found and undone on the device
        finally:
            torch.cuda.set_sync_debug_mode("default")
        after = [p.detach().clone() for p in trainer.model.parameters()]
        trainer.guard.settle(trainer.state)  # the one host sync, at a log interval
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in after)
    assert trainer.state.skipped_steps == 1


def _jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        h, w = 48 + 8 * (i % 3), 64 - 8 * (i % 2)
        smooth = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(smooth).resize((w, h), Image.BILINEAR)  # photo-like: low frequencies
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@needs_cuda
def test_nvjpeg_batch_decode_matches_the_cpu_decoder():
    from torchvision.io import ImageReadMode, decode_jpeg

    from largebatch.data.batch_decode import TorchvisionBatchDecoder

    files = _jpegs(12)
    decoder = TorchvisionBatchDecoder(
        lambda i: files[i],
        [0] * len(files),
        image_size_px=32,
        train=False,
        device=torch.device("cuda", 0),
        threads=1,
        describe=str,
        policy="fail",
    )
    tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in files]
    gpu = decoder._decode_cuda(tensors)
    for t, g in zip(tensors, gpu):
        cpu = decode_jpeg(t, mode=ImageReadMode.RGB)
        assert g.device.type == "cuda" and g.shape == cpu.shape and g.dtype == torch.uint8
        diff = (g.cpu().int() - cpu.int()).abs().float()
        # different IDCT and chroma upsampling: equal within JPEG tolerance, not bit for bit
        assert diff.mean() < 1.5 and torch.quantile(diff.flatten(), 0.99) <= 8, (diff.mean(), diff.max())


@needs_cuda
def test_nccl_process_group_and_every_comm_hook_on_one_rank():
    from torch.nn.parallel import DistributedDataParallel as DDP

    from largebatch.dist.hooks import ALGORITHMS, COMPRESSIONS, HookState, make_comm_hook
    from largebatch.dist.topology import build_groups, make_topology

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl", init_method=f"file://{tmp}/init", rank=0, world_size=1)
        try:
            assert dist.get_backend() == "nccl"
            t = torch.arange(8.0, device="cuda")
            dist.all_reduce(t)
            assert torch.equal(t.cpu(), torch.arange(8.0))
            groups = build_groups(make_topology(1, workers_per_node=1, torus_x=1))
            torch.manual_seed(0)
            x, y = torch.randn(16, 13, device="cuda"), torch.randn(16, 5, device="cuda")

            def grads(pair):
                torch.manual_seed(1)
                model = DDP(nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 5)).cuda(), device_ids=[0])
                if pair is not None:
                    model.register_comm_hook(*pair)
                ((model(x) - y) ** 2).mean().backward()
                return [p.grad.clone() for p in model.parameters()]

            plain = grads(None)
            for algorithm in ALGORITHMS:
                for compression in COMPRESSIONS:
                    got = grads(make_comm_hook(algorithm, compression, HookState(groups=groups)))
                    tol = {"none": 1e-6, "fp16": 2e-3, "bf16": 2e-2}[compression]
                    for g, w in zip(got, plain):
                        torch.testing.assert_close(g, w, rtol=tol, atol=tol, msg=f"{algorithm}/{compression}")
        finally:
            dist.destroy_process_group()


def test_train_compile_compiles_the_model_in_place(monkeypatch):
    # the wiring only (compiling for real takes minutes on CPU; benchmarks/gpu_resnet50.py compiles
    # ResNet-50 on the GPU): train.compile calls nn.Module.compile on the model the step runs, whose
    # parameters and checkpoint keys stay the model's own
    calls = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: calls.append(self))
    with tempfile.TemporaryDirectory() as tmp:
        keys = list(_trainer(tmp, "cpu").model.state_dict())
        trainer = _trainer(tmp, "cpu", ["train.compile=true"])
        assert calls == [trainer.ddp] and list(trainer.model.state_dict()) == keys
        assert _trainer(tmp, "cpu") and len(calls) == 1  # off by default
