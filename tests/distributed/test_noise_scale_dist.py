"""The noise-scale DDP hook on 2 gloo ranks, on least squares with Gaussian inputs, where the
per-example gradient covariance is known in closed form."""

import pytest
import torch
import torch.distributed as dist
from gloo import run_ranks
from torch.nn.parallel import DistributedDataParallel as DDP

from largebatch.dist.hooks import make_comm_hook
from largebatch.train.noise_scale import NoiseScaleEstimator, wrap_hook

N_FEATURES, NOISE_VAR = 10, 1.0


def _least_squares(rank, world_size, compression, steps, per_worker):
    """Loss 1/2 (w.x - y)^2 with x ~ N(0, I), y = w*.x + e, e ~ N(0, s^2), at a fixed w (no step):
    the per-example gradient (w.x - y) x has mean d = w - w* and covariance (|d|^2 + s^2) I + d d^T,
    so B_simple = n (1 + s^2/|d|^2) + 1 (Isserlis' theorem)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(N_FEATURES, 1, bias=False)
    w_star = torch.zeros(1, N_FEATURES)
    with torch.no_grad():
        model.weight.copy_(w_star + torch.full((1, N_FEATURES), N_FEATURES**-0.5))  # |d|^2 = 1
    ddp = DDP(model)
    state, hook = wrap_hook(make_comm_hook("allreduce", compression, None))
    ddp.register_comm_hook(state, hook)
    est = NoiseScaleEstimator(decay=0.999)
    g = torch.Generator().manual_seed(1000 + rank)
    for _ in range(steps):
        x = torch.randn(per_worker, N_FEATURES, generator=g)
        y = x @ w_star.T + NOISE_VAR**0.5 * torch.randn(per_worker, 1, generator=g)
        loss = 0.5 * (ddp(x) - y).square().mean()
        loss.backward()
        local_sq, global_sq = state.take()
        assert torch.allclose(global_sq, model.weight.grad.square().sum(), rtol=1e-2 if compression != "none" else 1e-5)
        est.update(local_sq, global_sq, per_worker, per_worker * world_size)
        model.weight.grad = None
    pair = torch.tensor([float(est.g_sq), float(est.trace)])
    dist.all_reduce(pair)
    return (pair[1] / pair[0]).item()


def _both(rank, world_size, steps, per_worker):
    return {c: _least_squares(rank, world_size, c, steps, per_worker) for c in ("none", "fp16")}


def test_hook_recovers_the_closed_form_noise_scale_within_10_percent():
    """With DDP's all-reduce and with fp16 compression (the hook wraps either)."""
    want = N_FEATURES * (1 + NOISE_VAR / 1.0) + 1  # 21
    got = run_ranks(_both, 2, 800, 8)
    assert got[0] == got[1]
    for compression, value in got[0].items():
        assert value == pytest.approx(want, rel=0.10), (compression, value)
