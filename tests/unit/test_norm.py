"""Ghost BN equals k separate per-worker BN computations (Goyal et al. sec. 2.3)."""

import copy

import pytest
import torch
from torch import nn

from largebatch.nn import GhostBatchNorm2d


def separate_workers(bn: nn.BatchNorm2d, x: torch.Tensor, n: int):
    """k = N / n independent BN layers (copies of ``bn``), one per group of n samples."""
    outs, copies = [], []
    for chunk in x.split(n):
        layer = copy.deepcopy(bn)
        outs.append(layer(chunk))
        copies.append(layer)
    return torch.cat(outs), copies


@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_backward_and_running_stats_match_separate_workers(channels_last):
    torch.manual_seed(0)
    n, groups, c = 8, 4, 5
    x = torch.randn(n * groups, c, 6, 6, dtype=torch.float64) * 3 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ghost = GhostBatchNorm2d(c, bn_batch_size=n).double()
    with torch.no_grad():
        ghost.weight.uniform_(0.5, 1.5)
        ghost.bias.uniform_(-0.5, 0.5)
    plain = nn.BatchNorm2d(c).double()
    plain.load_state_dict({k: v for k, v in ghost.state_dict().items()})

    xg = x.clone().requires_grad_(True)
    yg = ghost(xg)
    xs = x.clone().requires_grad_(True)
    ys, copies = separate_workers(plain, xs, n)
    assert torch.allclose(yg, ys, atol=1e-12)
    # Per-group statistics really differ from whole-batch statistics:
    assert not torch.allclose(yg, nn.functional.batch_norm(x, None, None, ghost.weight, ghost.bias, True), atol=1e-3)

    w = torch.randn_like(yg)
    (yg * w).sum().backward()
    (ys * w).sum().backward()
    assert torch.allclose(xg.grad, xs.grad, atol=1e-12)
    grad_w = sum(c_.weight.grad for c_ in copies)
    grad_b = sum(c_.bias.grad for c_ in copies)
    assert torch.allclose(ghost.weight.grad, grad_w, atol=1e-12)
    assert torch.allclose(ghost.bias.grad, grad_b, atol=1e-12)

    mean_rm = torch.stack([c_.running_mean for c_ in copies]).mean(0)
    mean_rv = torch.stack([c_.running_var for c_ in copies]).mean(0)
    assert torch.allclose(ghost.running_mean, mean_rm, atol=1e-12)
    assert torch.allclose(ghost.running_var, mean_rv, atol=1e-12)
    assert ghost.num_batches_tracked.item() == 1


def test_cumulative_momentum_none():
    torch.manual_seed(1)
    ghost = GhostBatchNorm2d(3, bn_batch_size=4, momentum=None).double()
    plain = nn.BatchNorm2d(3, momentum=None).double()
    xs = [torch.randn(8, 3, 2, 2, dtype=torch.float64) for _ in range(3)]
    for x in xs:
        ghost(x)
    # Cumulative average over forwards of the per-forward group average.
    group_means = torch.stack([torch.stack([c.mean(dim=(0, 2, 3)) for c in x.split(4)]).mean(0) for x in xs])
    assert torch.allclose(ghost.running_mean, group_means.mean(0), atol=1e-12)
    assert plain.momentum is None


def test_whole_batch_group_is_plain_bn_and_eval_uses_running_stats():
    torch.manual_seed(2)
    x = torch.randn(16, 3, 4, 4)
    ghost = GhostBatchNorm2d(3, bn_batch_size=0)
    plain = nn.BatchNorm2d(3)
    assert torch.allclose(ghost(x), plain(x), atol=1e-6)
    ghost.eval()
    plain.load_state_dict(ghost.state_dict())
    plain.eval()
    y = ghost(torch.randn(5, 3, 4, 4))  # any batch size in eval
    assert y.shape == (5, 3, 4, 4)


def test_indivisible_batch_raises():
    bn = GhostBatchNorm2d(3, bn_batch_size=4)
    with pytest.raises(ValueError, match="not a multiple of bn_batch_size=4"):
        bn(torch.randn(6, 3, 2, 2))
    with pytest.raises(ValueError, match=">= 0"):
        GhostBatchNorm2d(3, bn_batch_size=-1)
